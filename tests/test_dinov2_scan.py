"""DINOv2 at scale: the scanned block layout (nn.scan, params stacked per stack), remat policies, the layout
converters and the restacking a loader applies, and the per-backend attention implementation.

Parity of the scanned layout with the PyTorch reference is in test_dinov2.py (the same cases, parametrized by
layout); here a tiny random model checks the scanned layouts against the unrolled one directly.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from common import checkpoint, models, tree
from common.models import dinov2

KW = dict(embed_dim=32, depth=4, num_heads=2, img_size=56, num_register_tokens=4)
NAME = "dinov2_vits14_reg"  # the registered entry; KW overrides its size
# (scan_trainable_blocks, stacks): one stack, or blocks_frozen + blocks
SPLITS = [(-1, (("blocks", 4),)),
          (1, (("blocks_frozen", 3), ("blocks", 1))),
          (3, (("blocks_frozen", 1), ("blocks", 3)))]


def _images(batch=2, hw=(28, 42), seed=0):  # off the 4x4 pos-embed grid, so the resampling runs too
  return jnp.asarray(np.random.default_rng(seed).standard_normal((batch, *hw, 3)), jnp.float32)


@functools.lru_cache(maxsize=1)
def _unrolled():
  """Unrolled variables with every weight perturbed: at init the LayerScale gammas (1e-5) hide the blocks."""
  module = dinov2.DinoV2(**KW)
  flat = tree.flatten(jax.tree.map(np.asarray, jax.jit(module.init)(jax.random.key(0), _images())))
  rng = np.random.default_rng(1)
  flat = {k: (rng.normal(1.0, 0.3, v.shape) if k.endswith("gamma") else v + rng.normal(0, 0.05, v.shape))
          .astype(np.float32) for k, v in flat.items()}
  return module, tree.unflatten(flat)


def _max_err(a, b):
  return max(float(np.abs(np.asarray(x, np.float32) - np.asarray(y, np.float32)).max())
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@pytest.mark.parametrize("trainable,stacks", SPLITS)
def test_layout_converters_round_trip_and_match_the_scanned_model(trainable, stacks):
  module, variables = _unrolled()
  assert dinov2.scan_splits(module.depth, trainable) == stacks
  scanned_module = module.clone(scan_layers=True, scan_trainable_blocks=trainable)
  abstract = jax.eval_shape(scanned_module.init, jax.random.key(0), _images())
  scanned = dinov2.pyloop_to_scan(variables, stacks)
  # The stacked tree is exactly what the scanned module creates (names, shapes, dtypes) ...
  assert jax.tree.map(lambda x: (x.shape, x.dtype), scanned) == jax.tree.map(lambda x: (x.shape, x.dtype), abstract)
  assert dinov2.layout_of(scanned) == dinov2.layout_of(abstract) == stacks and dinov2.layout_of(variables) is None
  # ... abstract trees restack too (eval_shape leaves) ...
  shapes = jax.eval_shape(module.init, jax.random.key(0), _images())
  assert jax.tree.structure(dinov2.pyloop_to_scan(shapes, stacks)) == jax.tree.structure(abstract)
  # ... block i lands at its place in its stack, and back unchanged (also on params without the collection).
  frozen = stacks[0][1] if len(stacks) == 2 else 0
  np.testing.assert_array_equal(scanned["params"]["blocks"]["attn"]["qkv"]["kernel"][0],
                                variables["params"][f"blocks_{frozen}"]["attn"]["qkv"]["kernel"])
  for back in (dinov2.scan_to_pyloop(scanned), {"params": dinov2.scan_to_pyloop(scanned["params"])}):
    assert tree.flatten(back).keys() == tree.flatten(variables).keys()
    for k, v in tree.flatten(variables).items():
      np.testing.assert_array_equal(tree.flatten(back)[k], v, err_msg=k)
  assert dinov2.scan_to_pyloop(variables) == variables  # unrolled input: nothing to do


def test_layout_converter_errors():
  _, variables = _unrolled()
  with pytest.raises(ValueError, match="need blocks_0..blocks_4"):
    dinov2.pyloop_to_scan(variables, (("blocks", 5),))
  broken = tree.flatten(variables)
  del broken["params/blocks_2/ls1/gamma"]
  with pytest.raises(ValueError, match="do not hold the same parameters"):
    dinov2.pyloop_to_scan(tree.unflatten(broken), (("blocks", 4),))
  mixed = dinov2.pyloop_to_scan(variables, (("blocks", 4),))
  mixed["params"]["blocks_0"] = variables["params"]["blocks_0"]
  with pytest.raises(ValueError, match="both stacks and unrolled"):
    dinov2.scan_to_pyloop(mixed)


def _forward(module, variables):
  # n_intermediate=3 takes blocks from both stacks when they are split
  x, masks = _images(), np.random.default_rng(2).random((2, 6)) < 0.5
  return jax.jit(functools.partial(module.apply, n_intermediate=3))(variables, x, masks=masks)


def _grads(module, variables):
  def loss(v):
    out = module.apply(v, _images(), n_intermediate=1)
    return jnp.sum(out["x_norm_clstoken"] ** 2) + jnp.sum(out["intermediates"][0] ** 2)
  return jax.jit(jax.grad(loss))(variables)


@functools.lru_cache(maxsize=1)
def _unrolled_results():
  module, variables = _unrolled()
  return _forward(module, variables), _grads(module, variables)


@pytest.mark.parametrize("trainable,remat", [(-1, "none"), (1, "full"), (3, "dots_saveable")])
def test_scanned_forward_and_grads_equal_unrolled(trainable, remat):
  module, variables = _unrolled()
  want, g_want = _unrolled_results()
  scanned_module = module.clone(scan_layers=True, scan_trainable_blocks=trainable, remat=remat)
  stacks = dinov2.scan_splits(module.depth, trainable)
  scanned = dinov2.pyloop_to_scan(variables, stacks)
  got = _forward(scanned_module, scanned)
  assert got.keys() == want.keys() and len(got["intermediates"]) == 3
  assert _max_err(got, want) <= 1e-6, _max_err(got, want)
  g_want, g_got = dinov2.pyloop_to_scan(g_want, stacks), _grads(scanned_module, scanned)
  assert jax.tree.structure(g_got) == jax.tree.structure(g_want)
  scale = max(float(np.abs(g).max()) for g in jax.tree.leaves(g_want))
  assert _max_err(g_got, g_want) <= 1e-5 * scale, (_max_err(g_got, g_want), scale)


def test_remat_policies_shrink_the_backward_memory():
  # What each policy keeps shows in the compiled step's temp buffers: full < dots_saveable < none.
  module = dinov2.DinoV2(embed_dim=64, depth=4, num_heads=2, img_size=56, scan_layers=True)
  x = jnp.zeros((8, 56, 56, 3))
  variables = jax.eval_shape(module.init, jax.random.key(0), x)
  temp = {}
  for remat in dinov2.REMAT_POLICIES:
    m = module.clone(remat=remat)
    step = jax.jit(jax.grad(lambda v, x, m=m: jnp.sum(m.apply(v, x)["x_norm_patchtokens"] ** 2)))
    temp[remat] = step.lower(variables, x).compile().memory_analysis().temp_size_in_bytes
  assert temp["full"] < temp["dots_saveable"] < temp["none"], temp
  with pytest.raises(ValueError, match="remat='some'"):
    jax.eval_shape(module.clone(remat="some").init, jax.random.key(0), x)


def test_loaders_restack_a_converted_directory(tmp_path):
  """What models.load and checkpoint.load_init_from do through the ModelEntry.adapt hook: a converted (unrolled)
  directory goes into a scanned model, and a scanned export back into an unrolled one."""
  module, variables = _unrolled()
  entry = models.get(NAME)
  assert entry.adapt is dinov2.adapt_layout
  models.save(str(tmp_path / "dino"), NAME, KW, variables)
  # The real loaders: models.load with the scanned layout, and init_from into a scanned subtree.
  x = _images()
  want = jax.jit(module.apply)(variables, x)
  scanned, scanned_vars = models.load(str(tmp_path / "dino"), scan_layers=True, scan_trainable_blocks=1)
  assert dinov2.layout_of(scanned_vars["params"]) == (("blocks_frozen", 3), ("blocks", 1))
  assert _max_err(jax.jit(scanned.apply)(scanned_vars, x), want) <= 1e-6
  target = {"backbone": jax.tree.map(np.zeros_like, scanned_vars["params"]), "head": {"w": np.zeros(2)}}
  filled = checkpoint.load_init_from(target, str(tmp_path / "dino"), into="backbone")
  for a, b in zip(jax.tree.leaves(filled["backbone"]), jax.tree.leaves(scanned_vars["params"])):
    np.testing.assert_array_equal(a, b)
  loaded = models.load_variables(str(tmp_path / "dino"))
  kwargs = dict(KW, scan_layers=True, scan_trainable_blocks=1)
  abstract = models.abstract_variables(entry, kwargs)
  with pytest.raises(tree.MismatchError, match=r"missing in checkpoint \(\d+\): params/blocks/"):  # hence the hook
    tree.merge_strict(abstract, loaded)
  merged = tree.merge_strict(abstract, dinov2.adapt_layout(loaded, abstract))
  assert _max_err(jax.jit(entry.build(**kwargs).apply)(merged, x), want) <= 1e-6
  # load_init_from merges the params alone into a subtree; the reference is then that subtree.
  params = dinov2.adapt_layout(loaded["params"], abstract["params"])
  assert dinov2.layout_of(params) == (("blocks_frozen", 3), ("blocks", 1))
  # A scanned export loads into an unrolled model, and matching layouts pass through untouched.
  back = dinov2.adapt_layout(merged, jax.eval_shape(module.init, jax.random.key(0), x))
  assert _max_err(jax.jit(module.apply)(back, x), want) == 0.0
  assert dinov2.adapt_layout(merged, abstract) is merged
  # A checkpoint that does not restack passes through, so the strict merge names the keys.
  broken = tree.flatten(loaded)
  del broken["params/blocks_2/ls1/gamma"]
  broken = tree.unflatten(broken)
  assert dinov2.adapt_layout(broken, abstract) is broken
  with pytest.raises(tree.MismatchError, match="params/blocks_0"):
    tree.merge_strict(abstract, dinov2.adapt_layout(broken, abstract))


def test_attention_implementation_gate():
  gate = dinov2.attention_implementation
  for dtype in (jnp.bfloat16, jnp.float16, "bfloat16"):
    assert gate(dtype, 64, backend="gpu") == "cudnn"
  assert gate(jnp.bfloat16, 8, "gpu") == gate(jnp.bfloat16, 128, "gpu") == "cudnn"
  # cuDNN raises on these instead of falling back, so they must take XLA:
  assert gate(jnp.float32, 64, "gpu") is None  # fp32
  assert gate(jnp.bfloat16, 60, "gpu") is None and gate(jnp.bfloat16, 136, "gpu") is None  # head dims
  assert gate(jnp.bfloat16, 64, "cpu") is None and gate(jnp.bfloat16, 64, "tpu") is None  # no cuDNN
  assert gate(jnp.bfloat16, 64) is None  # these tests run on CPU


def test_attention_falls_back_to_xla_on_cpu():
  attn = dinov2.Attention(num_heads=4, dtype=jnp.float32)
  x = jnp.asarray(np.random.default_rng(3).standard_normal((2, 21, 64)), jnp.float32)
  variables = attn.init(jax.random.key(0), x)
  p = variables["params"]
  # The explicit softmax attention of the torch reference, (B, N, 3, H, hd) head layout.
  q, k, v = jnp.moveaxis((x @ p["qkv"]["kernel"] + p["qkv"]["bias"]).reshape(2, 21, 3, 4, 16), 2, 0)
  weights = jax.nn.softmax(jnp.einsum("bqhd,bkhd->bhqk", q, k) / 4.0, axis=-1)
  want = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(2, 21, 64) @ p["proj"]["kernel"] + p["proj"]["bias"]
  got = jax.jit(attn.apply)(variables, x)
  assert _max_err(got, want) <= 1e-6, _max_err(got, want)
  # bf16 on CPU: the gate keeps XLA (cuDNN would raise here), close to fp32
  low = jax.jit(attn.clone(dtype=jnp.bfloat16).apply)(variables, x)
  assert low.dtype == jnp.bfloat16 and _max_err(low, want) < 0.05
