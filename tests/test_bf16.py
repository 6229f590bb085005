"""bfloat16 compute (`dtype="bfloat16"`, float32 params) against the float32 reference, one test per family.

Each test runs the same random-weight module and input in both dtypes and bounds the relative error
`max |bf16 - f32| / max |f32|` of the outputs (and, for embeddings, the cosine similarity), checks that the
outputs are float32 values rather than bf16 ones cast up (the heads compute in float32), and takes a jitted
gradient of a simple loss in bf16. Bounds are ~3-8x the values measured on this CPU (stated beside each): bf16
rounds to 2^-8 relative per layer and random narrow weights amplify that, so a bound this size catches a broken
bf16 path (wrong dtype plumbing, a lost float32 normalisation), not a last-ulp change; the depthwise conv's
float32 accumulation, whose loss shows mostly inside the block, has its own test.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from common import image_ops
from common.models import vgg
from distill import models as dm
from facerec import dsr as dsr_lib
from facerec import models as fm

BF16 = "bfloat16"  # as the configs give it (a string); the modules also take jnp.bfloat16

# Unoptimised XLA compiles these small models 2-3x faster; the bf16 convs are still computed as on the optimised
# path (upcast to float32, rounded once), so every measured error below is the same either way.
pytestmark = pytest.mark.usefixtures("fast_compiles")


def _rel_err(low, ref) -> float:
  low, ref = np.asarray(low, np.float64), np.asarray(ref, np.float64)
  return float(np.abs(low - ref).max() / np.abs(ref).max())


def _min_cos(low, ref) -> float:
  low, ref = np.asarray(low, np.float64), np.asarray(ref, np.float64)
  return float(np.min(np.sum(low * ref, -1) / np.linalg.norm(low, axis=-1) / np.linalg.norm(ref, axis=-1)))


def _images(b, size, seed=0):
  return jnp.asarray(np.random.default_rng(seed).random((b, size, size, 3), np.float32))


def _random_variables(module, x, seed=0):
  """Random float32 variables of the module's shapes, drawn on the host: a jitted init would cost a compile as
  large as the forward's. Kernels N(0, 1 / fan_in), so activations stay O(1) through the depth; norm scales,
  variances and XCA temperatures in [0.5, 1.5]; layer scales (EdgeFace `gamma*`) in [0.1, 0.5], so every block
  contributes (timm's 1e-6 would leave little more than the stem and head); biases and means N(0, 0.1)."""
  abstract = jax.eval_shape(module.init, jax.random.key(0), x)
  _assert_f32(abstract)  # params (and BatchNorm statistics) are created float32 whatever the compute dtype
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    name = str(path[-1].key)
    if name == "kernel":
      value = rng.normal(0.0, np.prod(leaf.shape[:-1]) ** -0.5, leaf.shape)
    elif name in ("scale", "var", "temperature"):
      value = rng.uniform(0.5, 1.5, leaf.shape)
    elif name.startswith("gamma"):
      value = rng.uniform(0.1, 0.5, leaf.shape)
    else:
      value = rng.normal(0.0, 0.1, leaf.shape)
    return jnp.asarray(value, jnp.float32)

  return jax.tree_util.tree_map_with_path(draw, abstract)


def _both(make, variables, x, **kw):
  """Outputs of the float32 and the bf16 module on the same variables and input."""
  f32, low = make(jnp.float32), make(BF16)
  run = lambda module: jax.jit(lambda v, x: module.apply(v, x, **kw))(variables, x)
  return run(f32), run(low)


def _assert_float32_values(out):
  """float32 and not merely bf16 values cast up: a float32 head gives ~no bf16-representable outputs (measured 0%,
  against 100% with a bf16 head)."""
  out = np.asarray(out)
  assert out.dtype == np.float32
  assert np.mean(out == np.asarray(jnp.asarray(out).astype(jnp.bfloat16).astype(jnp.float32))) < 0.1


def _assert_f32(tree):
  assert {leaf.dtype for leaf in jax.tree.leaves(tree)} == {jnp.dtype(jnp.float32)}


def _check_grads(make, variables, x, loss_of_output, min_cos, **kw):
  """A jitted bf16 training step's gradient w.r.t. the float32 params: float32, finite, and close to the float32
  model's in direction (cosine over all params > min_cos) and size (norm within 0.5%; measured within 0.1%)."""
  params, rest = variables["params"], {k: v for k, v in variables.items() if k != "params"}

  def grads(dtype):
    module = make(dtype)

    def loss(p, rest, x):  # everything as arguments: closed-over arrays would be compiled in as constants
      out = module.apply({"params": p, **rest}, x, **kw)
      if kw.get("mutable"):
        out, new_state = out
        _assert_f32(new_state)  # BatchNorm running statistics stay float32 in a bf16 model
      return loss_of_output(out)

    return jax.jit(jax.grad(loss))(params, rest, x)

  ref, low = grads(jnp.float32), grads(BF16)
  _assert_f32(low)
  flat = lambda g: np.concatenate([np.ravel(np.asarray(leaf, np.float64)) for leaf in jax.tree.leaves(g)])
  ref, low = flat(ref), flat(low)
  assert np.isfinite(low).all()
  ratio = np.linalg.norm(low) / np.linalg.norm(ref)
  assert low @ ref / np.linalg.norm(low) / np.linalg.norm(ref) > min_cos
  assert abs(ratio - 1) < 0.005


# LaDeDa at width 8 and one block per stage (the smoke teacher: the same blocks, strides and 3x3/1x1 pattern)
# on 64 px; kernel3 (1, 1, 1, 1) is the LaDeDa33 variant (3x3 in every stage). Measured (LaDeDa9 / LaDeDa33,
# eval mode): patch map 9.0e-3 / 9.1e-3, image logit 5.7e-4 / 1.2e-3 of the largest patch logit; with train-mode
# BatchNorm (batch statistics over 4 x 7 x 7 cells) 2.4e-2 / 2.8e-2 and 1.2e-3 / 3.0e-3. The full [3, 4, 6, 3]
# depth at width 8 is chaotic at random init: with Flax's init the patch map moves 0.12 in bf16, and 0.04 in a
# float32 model whose params alone are rounded to bf16 (0.64 and 0.49 in train mode; 0.036 and 0.60 in bf16 with
# the variables drawn here), so it measures the random network's sensitivity rather than bf16's.
@pytest.mark.parametrize("kernel3", [(1, 1, 0, 0), (1, 1, 1, 1)])
def test_ladeda(kernel3):
  """LaDeDa9 and the LaDeDa33 kernel3 variant; the bf16 gradient (the costliest compile here) only for LaDeDa9."""
  make = lambda dtype: dm.LaDeDa(width=8, layers=(1, 1, 1, 1), kernel3=kernel3, normalize_input=True, dtype=dtype)
  x = _images(4, 64)
  variables = _random_variables(make(BF16), x)
  (ref, ref_aux), (low, low_aux) = _both(make, variables, x)
  ref_patch, low_patch = ref_aux["patch_logits"], low_aux["patch_logits"]
  _assert_float32_values(low)
  _assert_float32_values(low_patch)
  assert _rel_err(low_patch, ref_patch) < 0.03
  # The image logit is a mean of patch logits that largely cancel: measure its error against the patch scale.
  assert np.abs(low - ref).max() / np.abs(ref_patch).max() < 0.005
  if kernel3 == (1, 1, 1, 1):
    return
  # Gradient cosine measured 0.9944: the BatchNorm scale/bias gradients of layers feeding a train-mode BatchNorm
  # nearly cancel (it removes their mean), so the bf16 cotangents' rounding shows (per leaf down to 0.84), though
  # BatchNorm sums them in float32.
  _check_grads(make, variables, x, lambda out: jnp.mean(jax.nn.softplus(out[0])), 0.98, train=True,
               mutable=["batch_stats"])


def test_tiny_ladeda():
  make = lambda dtype: dm.TinyLaDeDa(normalize_input=True, dtype=dtype)
  x = _images(4, 64)
  variables = _random_variables(make(BF16), x)
  (ref, ref_aux), (low, low_aux) = _both(make, variables, x)
  ref_patch, low_patch = ref_aux["patch_logits"], low_aux["patch_logits"]
  _assert_float32_values(low)
  _assert_float32_values(low_patch)
  # Measured: patch map 5.3e-3 (7.6e-3 in train mode); image logit 2.4e-4 of the largest patch logit (the mean
  # logit is 8% of the patch scale, so its own relative error, 2.8e-3, mostly measures the cancellation).
  assert _rel_err(low_patch, ref_patch) < 0.02
  assert np.abs(low - ref).max() / np.abs(ref_patch).max() < 0.002
  _check_grads(make, variables, x, lambda out: jnp.mean(out[1]["patch_logits"] ** 2), 0.9998, train=True,  # 0.99997
               mutable=["batch_stats"])


# xxs dims with dense linears and xs dims with low-rank ones, one block per stage (stage 1 a conv encoder with
# the 3x3 depthwise conv, stages 2-4 SDTA blocks: XCA, the Fourier positions, the chunked depthwise convs).
@pytest.mark.parametrize("variant", ["edgeface_xxs", "edgeface_xs_gamma_06"])
def test_edgeface(variant):
  """Dense (xxs, base) and low-rank (xs, s) linears; the bf16 gradient (the costliest compile) only for xxs."""
  cfg = dict(fm.VARIANTS[variant], depths=(1, 1, 1, 1))
  make = lambda dtype: fm.EdgeFace(**cfg, normalize_input=True, dtype=dtype)
  x = _images(4, 112)
  variables = _random_variables(make(BF16), x)
  ref, low = _both(make, variables, x)
  assert low.shape == (4, 512)
  _assert_float32_values(low)
  # Measured (xxs / xs): cosine 0.999988 / 0.999984, relative error 4.7e-3 / 4.5e-3.
  assert _min_cos(low, ref) > 0.9999
  assert _rel_err(low, ref) < 0.015
  if variant != "edgeface_xxs":
    return
  # Gradient cosine measured 0.99998, norm ratio 0.9991; with Flax's bf16 bias and layer-scale adds, bias
  # gradients came out up to 12% small (see test_bias_and_layer_scale_gradients_sum_in_float32).
  _check_grads(make, variables, x, lambda emb: jnp.mean(emb[:2] * emb[2:]), 0.9999)


def test_depthwise_conv_cpu_path_matches_the_conv(monkeypatch):
  """The CPU shifted-sum path computes the grouped conv that accelerators run (XLA computes a bf16 conv in float32
  and rounds once): equal up to float32 summation order, not several times worse (bf16 partial sums)."""
  if jax.default_backend() != "cpu":
    pytest.skip("the shifted-sum path is taken on CPU only")
  x = jnp.asarray(np.random.default_rng(1).standard_normal((2, 7, 7, 16)), jnp.float32)
  conv = fm.DepthwiseConv(9, dtype=BF16)
  variables = _random_variables(conv, x)
  got = np.asarray(conv.apply(variables, x), np.float32)
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")  # the accelerator branch: lax's grouped conv, on CPU
  want = np.asarray(conv.apply(variables, x), np.float32)
  # Measured: 100% bitwise equal. Summed in bf16 (the old CPU path): 28% equal, max difference 0.03 (outputs up to
  # 2.6), and 1.6e-2 relative error against float32 inputs and weights where the conv has 4.3e-3.
  assert np.mean(got == want) > 0.95
  np.testing.assert_allclose(got, want, rtol=0, atol=0.01)


@pytest.mark.parametrize("make", [lambda d: fm.Dense(8, dtype=d), lambda d: fm.Conv(8, (3, 3), dtype=d),
                                  lambda d: fm.DepthwiseConv(3, dtype=d), lambda d: fm.ConvEncoder(3, None, dtype=d)],
                         ids=["Dense", "Conv", "DepthwiseConv", "ConvEncoder"])
def test_bias_and_layer_scale_gradients_sum_in_float32(make):
  """Bias and layer-scale gradients sum the cotangent over batch and space; in bf16 that sum stalls (XLA CPU
  accumulates a bf16 reduction in bf16). Flax's own nn.Dense / nn.Conv in bf16 measure 512 here where float32
  gives 4104 (each of 4 x 32 x 32 positions adds ~1); these layers add bias and gamma in float32."""
  rng = np.random.default_rng(2)
  x = jnp.asarray(rng.standard_normal((4, 32, 32, 8)), jnp.float32)
  weights = jnp.asarray(rng.uniform(0.5, 1.5, (4, 32, 32, 8)), jnp.float32)  # same-sign cotangents: a growing sum
  variables = _random_variables(make(BF16), x)

  def grads(dtype):
    module = make(dtype)
    loss = lambda v, x: jnp.sum(module.apply(v, x).astype(jnp.float32) * weights)
    return jax.jit(jax.grad(loss))(variables, x)

  ref, low = grads(jnp.float32), grads(BF16)
  checked = []
  for (path, r), l in zip(jax.tree_util.tree_flatten_with_path(ref)[0], jax.tree.leaves(low)):
    if str(path[-1].key) in ("bias", "gamma"):
      checked.append(jax.tree_util.keystr(path))
      assert l.dtype == jnp.float32 and _rel_err(l, r) < 0.02, checked[-1]  # measured
  assert checked


def test_dsr():
  make = lambda dtype: dsr_lib.DSR(features=16, num_blocks=2, dtype=dtype)
  x = _images(4, 16)
  variables = _random_variables(make(BF16), x)
  tail = variables["params"]["tail"]
  tail["kernel"] = 0.03 * tail["kernel"]  # residuals over the bicubic skip of up to ~0.2 (a plausible size), not ~3
  skip = image_ops.resize_bicubic_torch(x, (112, 112))  # the DSR's float32 skip: what it adds the residual to
  ref, low = _both(make, variables, x)
  assert low.shape == (4, 112, 112, 3)
  _assert_float32_values(low)
  assert _rel_err(low - skip, ref - skip) < 0.01  # of the residual over bicubic; measured 3.3e-3
  assert float(jnp.abs(low - ref).max()) < 0.5 / 255  # of the image: under half an 8-bit level; measured 0.17 / 255
  # Gradient cosine measured 0.999999; with Flax's bf16 bias adds 0.79 (the tail bias gradient at 0.2x).
  _check_grads(make, variables, x, lambda sr: jnp.mean(jnp.abs(sr - 0.5)), 0.9999)


def test_vgg16():
  make = lambda dtype: vgg.VGG16(dtype=dtype)
  x = _images(2, 32)
  variables = _random_variables(make(BF16), x)
  ref, low = _both(make, variables, x)
  for tap in vgg.TAPS:
    assert low[tap].dtype == jnp.bfloat16  # feature taps stay in the compute dtype (see VGG16's docstring)
    assert _rel_err(low[tap], ref[tap]) < 0.015, tap  # measured 4.2e-3 (relu3_3) to 5.7e-3 (relu2_2)
  # A perceptual loss never trains VGG: it backpropagates through it into the image, so take that gradient.
  # (Weights as an argument: closed over, they would be baked into the executable as 60 MB of constants.)
  low_vgg = make(BF16)
  loss = lambda v, img: sum(jnp.mean(jnp.abs(f.astype(jnp.float32))) for f in low_vgg.apply(v, img).values())
  grad = np.asarray(jax.jit(jax.grad(loss, argnums=1))(variables, x))
  assert grad.dtype == np.float32 and np.isfinite(grad).all() and np.abs(grad).max() > 0
