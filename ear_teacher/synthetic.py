"""Synthetic ear images: a stand-in data set with real identity structure.

Each identity is a set of ear *shape* parameters (helix size and aspect, rim
thickness, antihelix fork angle, concha size and depth, lobe size and
attachment, tragus position, skin and hair tone).  Each image of an identity
re-renders that shape under a new pose, light, background, colour mode, noise
and blur, so images of one identity are more alike than images of two.

Rendering is numpy only.  Every anatomical part is a signed-distance field
(SDF); the parts are summed into a height map whose gradient gives surface
normals for Lambertian shading, and smooth falloffs keep edges anti-aliased.

CLI::

    python -m ear_teacher.synthetic --out DIR [--num_identities 64]
        [--images_per_identity 8] [--val_identities 16] [--size 64] [--seed 0]

writes DIR/{train,val}.npy (uint8, (N,S,S,3)) and DIR/{train,val}_ids.npy
(int32); validation identities are new ears, disjoint from the training ones.
"""

import argparse
import os

import numpy as np

from common import progress


def sample_identity(rng):
    """Draws the shape and tone parameters that define one ear identity."""
    tone = rng.uniform()  # 0 = light skin, 1 = dark skin
    skin = (1 - tone) * np.array([0.93, 0.76, 0.64]) + tone * np.array([0.42, 0.28, 0.20])
    return dict(
        radius=rng.uniform(0.70, 0.82),        # ear half-height, canvas units
        aspect=rng.uniform(0.45, 0.72),        # width / height of the helix
        height=rng.uniform(0.78, 0.92),        # helix half-height (lobe excluded)
        tilt=np.deg2rad(rng.uniform(-15, 15)), # ear inclination on the head
        rim=rng.uniform(0.10, 0.17),           # helix rim thickness
        helix_start=np.deg2rad(rng.uniform(165, 195)),  # front end of the C
        fork=np.deg2rad(rng.uniform(45, 90)),  # antihelix crura opening angle
        fork_xy=np.array([0.12, 0.38]) + rng.uniform(-0.07, 0.07, 2),
        bend=rng.uniform(0.15, 0.4),           # how far back the antihelix bows
        concha=rng.uniform(0.2, 0.33),         # concha bowl radius
        concha_xy=np.array([-0.12, -0.08]) + rng.uniform(-0.06, 0.06, 2),
        depth=rng.uniform(0.5, 1.0),           # concha darkness / depth
        lobe=rng.uniform(0.16, 0.34),          # lobe radius
        attach=rng.uniform(),                  # 0 = free lobe, 1 = attached
        tragus=rng.uniform(-0.12, 0.08),       # tragus height offset
        skin=np.clip(skin * rng.uniform(0.95, 1.05, 3), 0, 1),
        hair=rng.uniform(0.05, 0.45) * np.array([1.0, 0.8, 0.6]) ** rng.uniform(0, 2),
    )


def sample_pose(rng):
    """Draws the per-image nuisance variables (pose, light, colour, noise)."""
    return dict(
        angle=np.deg2rad(rng.uniform(-8, 8)),  # added to the identity tilt
        scale=rng.uniform(0.9, 1.08),
        shift=rng.uniform(-0.06, 0.06, 2),
        light_azimuth=np.deg2rad(rng.uniform(20, 160)),  # mostly from above, as in photos
        light_elevation=np.deg2rad(rng.uniform(35, 65)),
        grey=rng.uniform() < 0.25,
        hair=rng.uniform() < 0.15,
        noise=rng.uniform(0.005, 0.03),
        blur=rng.uniform(0.0, 0.8),
    )


def _smoothstep(e0, e1, x):
    t = np.clip((x - e0) / (e1 - e0), 0.0, 1.0)
    return t * t * (3 - 2 * t)


def _ellipse(x, y, cx, cy, ax, ay):
    """Approximate SDF of an axis-aligned ellipse (exact for circles)."""
    return (np.hypot((x - cx) / ax, (y - cy) / ay) - 1.0) * min(ax, ay)


def _segments(x, y, a, b):
    """Distance from every pixel to the nearest of segments a[k] -> b[k] ((K, 2) each)."""
    a, b = a[:, :, None, None], b[:, :, None, None]
    ab = b - a
    t = ((x - a[:, 0]) * ab[:, 0] + (y - a[:, 1]) * ab[:, 1]) / (ab ** 2).sum(1)
    t = np.clip(t, 0, 1)
    return np.hypot(x - a[:, 0] - t * ab[:, 0], y - a[:, 1] - t * ab[:, 1]).min(0)


def _bezier(p0, p1, p2, n=6):
    t = np.linspace(0, 1, n)[:, None]
    return (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t ** 2 * p2


def _silhouette(p, x, y):
    """SDF of the whole ear outline: helix ellipse smoothly joined to the lobe."""
    upper = _ellipse(x, y, 0.0, 0.2, p["aspect"], p["height"])
    lobe = _ellipse(x, y, -0.1 - 0.12 * p["attach"], -0.62, 0.9 * p["lobe"], p["lobe"])
    # A larger blend radius fills the notch above the lobe: an "attached" lobe.
    k = 0.08 + 0.25 * p["attach"]
    h = np.clip(0.5 + 0.5 * (lobe - upper) / k, 0, 1)
    return lobe + (upper - lobe) * h - k * h * (1 - h)


def _smooth_noise(rng, size, cells):
    """Low-frequency noise: a random grid bilinearly upsampled to size x size."""
    grid = rng.normal(size=(cells + 1, cells + 1))
    c = np.linspace(0, cells, size)
    i = np.minimum(c.astype(int), cells - 1)
    f = c - i
    rows = grid[i] * (1 - f)[:, None] + grid[i + 1] * f[:, None]
    return rows[:, i] * (1 - f) + rows[:, i + 1] * f


def _blur(img, sigma):
    """Separable Gaussian blur of an (H, W, C) image, edges padded by replication."""
    if sigma < 0.05:
        return img
    radius = int(np.ceil(2.5 * sigma))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps /= taps.sum()
    for axis in (0, 1):
        pad = [(radius, radius) if a == axis else (0, 0) for a in range(img.ndim)]
        padded = np.pad(img, pad, mode="edge")
        n = img.shape[axis]
        img = sum(w * np.take(padded, np.arange(k, k + n), axis=axis) for k, w in enumerate(taps))
    return img


def render_ear(params, pose, rng, size):
    """Renders one ear (identity `params`, nuisance `pose`) as uint8 (size, size, 3)."""
    c = np.linspace(-1, 1, size, dtype=np.float32)
    gx, gy = np.meshgrid(c, -c)  # y points up, row 0 is the top
    # Inverse pose: canvas -> ear-local coordinates in units of the ear radius.
    angle = params["tilt"] + pose["angle"]
    cos, sin = np.cos(angle), np.sin(angle)
    dx, dy = gx - pose["shift"][0], gy - pose["shift"][1]
    r = params["radius"] * pose["scale"]
    x = (cos * dx + sin * dy) / r
    y = (-sin * dx + cos * dy) / r + 0.05  # centres helix plus lobe vertically
    px = 2.0 / (size * r)  # one pixel in local units, the anti-aliasing width

    sil = _silhouette(params, x, y)
    alpha = np.clip(0.5 - sil / px, 0, 1)
    height = 0.25 * _smoothstep(0.0, -0.15, sil)  # rounded fleshy edge

    # Helix: a raised rim along the outline with a groove (scapha) inside it,
    # absent over the front-lower sector where the ear opens onto the face.
    phi = np.arctan2(y - 0.2, x)
    phi = np.where(phi < -np.pi / 2 - 0.2, phi + 2 * np.pi, phi)  # front is contiguous
    rim = _smoothstep(params["helix_start"] + 0.15, params["helix_start"] - 0.15, phi)
    rim *= _smoothstep(-np.pi / 2 - 0.2, -np.pi / 2 + 0.3, phi)  # fade into the lobe
    t = params["rim"]
    height += rim * (0.45 * np.exp(-((sil + 0.5 * t) / (0.45 * t)) ** 2)
                     - 0.2 * np.exp(-((sil + 1.45 * t) / (0.4 * t)) ** 2))

    # Crus of helix: the rim's front end turns inward across the concha top.
    a = params["helix_start"] - 0.1  # start on the rim's centre line, where it fades
    start = np.array([(params["aspect"] - 0.6 * t) * np.cos(a),
                      0.2 + (params["height"] - 0.6 * t) * np.sin(a)])
    cx, cy = params["concha_xy"]
    crus = _segments(x, y, start[None], np.array([[cx + 0.04, cy + 0.2]]))
    height += 0.2 * np.exp(-(crus / 0.05) ** 2)

    # Antihelix: a curved stem rising behind the concha that forks into the
    # superior (up) and inferior (forward) crura: the inner "Y" ridge.
    fork = params["fork_xy"]
    stem = _bezier(np.array([0.02, -0.42]), np.array([params["bend"], -0.05]), fork)
    dirs = 2.0 + np.array([-0.5, 0.5]) * params["fork"]  # about 115 deg +- half
    ends = fork + 0.32 * np.stack([np.cos(dirs), np.sin(dirs)], axis=1)
    ah = _segments(x, y, np.concatenate([stem[:-1], [fork, fork]]), np.concatenate([stem[1:], ends]))
    height += 0.3 * np.exp(-(ah / 0.07) ** 2)

    # Concha: a bowl in front of the stem; its depth also darkens the albedo.
    cs = params["concha"]
    rho2 = ((x - cx) / (0.85 * cs)) ** 2 + ((y - cy) / cs) ** 2
    bowl = np.clip(1 - rho2, 0, 1) ** 0.6
    height -= 0.5 * params["depth"] * bowl
    albedo = 1 - 0.55 * params["depth"] * bowl
    canal = np.hypot(x - cx + 0.55 * cs, y - cy + 0.25 * cs)
    albedo *= 1 - 0.6 * np.exp(-(canal / (0.35 * cs)) ** 2)  # ear canal opening

    # Tragus: a small bump just in front of the concha.
    trag = ((x - cx + 1.05 * cs) / 0.09) ** 2 + ((y - cy - 0.03 - params["tragus"]) / 0.13) ** 2
    height += 0.3 * np.exp(-trag)
    alpha = np.maximum(alpha, np.clip(1.2 - trag, 0, 1))

    # Lambertian shading from height-map normals, plus a global falloff
    # along the light direction so lighting is visible on the canvas too.
    hy, hx = np.gradient(height, -px, px)
    az, el = pose["light_azimuth"], pose["light_elevation"]
    light = np.array([np.cos(az) * np.cos(el), np.sin(az) * np.cos(el), np.sin(el)])
    dot = (-hx * light[0] - hy * light[1] + light[2]) / np.sqrt(hx ** 2 + hy ** 2 + 1)
    shade = 0.35 + 0.65 * np.clip(dot, 0, None) / light[2]
    ramp = 1 + 0.15 * (gx * np.cos(az) + gy * np.sin(az))
    ear = params["skin"] * (albedo * shade)[..., None]

    # Background: head skin with texture, the ear's cast shadow, maybe hair.
    off = 0.12 * light[:2] / light[2]
    shadow = np.clip(0.5 - _silhouette(params, x + off[0], y + off[1]) / px, 0, 1)
    bg = params["skin"] * 0.9 * (1 + 0.06 * _smooth_noise(rng, size, 6))[..., None]
    bg = bg * (1 - 0.35 * shadow)[..., None]
    if pose["hair"]:
        edge = gx * np.cos(angle + 1.1) + gy * np.sin(angle + 1.1)
        strands = 1 + 0.25 * np.sin(40 * (gx + 0.3 * gy) + 3 * _smooth_noise(rng, size, 4))
        hair = _smoothstep(0.7, 0.77, edge + 0.1 * _smooth_noise(rng, size, 3))
        bg = bg * (1 - hair[..., None]) + (params["hair"] * strands[..., None]) * hair[..., None]
    img = (bg * (1 - alpha[..., None]) + ear * alpha[..., None]) * ramp[..., None]

    img = _blur(img, pose["blur"] * size / 64)
    img = img + rng.normal(0, pose["noise"], img.shape)
    if pose["grey"]:  # after the noise, so grey images have R == G == B exactly
        img = np.repeat(img @ np.array([0.299, 0.587, 0.114])[:, None], 3, axis=-1)
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)


def generate(num_identities, images_per_identity, size, seed, id_offset=0):
    """Renders `images_per_identity` images for each of `num_identities` ears.

    Identity k (k from `id_offset`) is drawn from its own RNG stream, so the
    same (seed, identity) is the same ear in any call; a disjoint id range
    gives new ears.  Returns (images uint8 (N, size, size, 3), ids int32 (N,)).
    """
    images = np.empty((num_identities * images_per_identity, size, size, 3), np.uint8)
    ids = np.repeat(np.arange(id_offset, id_offset + num_identities, dtype=np.int32),
                    images_per_identity)
    desc = f"render ears (ids {id_offset}-{id_offset + num_identities - 1})"
    for n, ident in enumerate(progress.track(ids, desc=desc, unit="images")):
        # Fixed-length seed tuples keep the identity and image streams distinct.
        params = sample_identity(np.random.default_rng([seed, ident, 0, 0]))
        image_rng = np.random.default_rng([seed, ident, 1, n % images_per_identity])
        images[n] = render_ear(params, sample_pose(image_rng), image_rng, size)
    return images, ids


def _save_atomic(arrays, out):
    """Writes every array to a temp file first so no half-written .npy remains."""
    os.makedirs(out, exist_ok=True)
    for name, arr in arrays.items():
        with open(os.path.join(out, name + ".tmp"), "wb") as f:
            np.save(f, arr)
    for name in arrays:
        os.replace(os.path.join(out, name + ".tmp"), os.path.join(out, name))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--num_identities", type=int, default=64)
    parser.add_argument("--images_per_identity", type=int, default=8)
    parser.add_argument("--val_identities", type=int, default=16)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    train, train_ids = generate(args.num_identities, args.images_per_identity, args.size, args.seed)
    # Validation ears take the ids after the training ones: unseen identities.
    val, val_ids = generate(args.val_identities, args.images_per_identity, args.size,
                            args.seed, id_offset=args.num_identities)
    _save_atomic({"train.npy": train, "train_ids.npy": train_ids,
                  "val.npy": val, "val_ids.npy": val_ids}, args.out)
    print(f"wrote {len(train)} train / {len(val)} val images of {args.size}px to {args.out}")


if __name__ == "__main__":
    main()
