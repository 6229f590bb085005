"""A tiny classifier trained through the shared loop: the foundation tests' workload.

    python -m tests.toy_main --config tests/toy_config.py --workdir /tmp/toy
"""

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
import optax

from common import augment, cli, data, optim, parallel, trainer


class TinyNet(nn.Module):
  num_classes: int = 4

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(8, (3, 3), name="conv")(x))
    x = x.mean(axis=(1, 2))
    return nn.Dense(self.num_classes, name="head")(x)


def make_data(n: int, size: int, seed: int):
  """Class k brightens colour channel k (class 3 darkens all) under strong noise: learnable, not instant."""
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, 4, n).astype(np.int32)
  offsets = np.array([[0.2, 0, 0], [0, 0.2, 0], [0, 0, 0.2], [-0.2, -0.2, -0.2]], np.float32)
  images = 0.5 + offsets[labels][:, None, None, :] + 0.2 * rng.standard_normal((n, size, size, 3))
  return np.clip(images, 0, 1).astype(np.float32), labels


def make_task(config) -> trainer.Task:
  model = TinyNet()
  images, labels = make_data(config.num_train, config.image_size, config.seed)
  val_images, val_labels = make_data(config.num_val, config.image_size, config.seed + 1)
  train_source = data.ArraySource("toy_train", image=images, label=labels)
  val_source = data.ArraySource("toy_val", image=val_images, label=val_labels)

  def loss_fn(params, batch, ctx):
    logits = model.apply({"params": params}, batch["image"])
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()
    loss = jnp.where(ctx.step == config.nan_at_step, jnp.nan, loss)  # test hook (-1: never)
    return loss, ({"accuracy": jnp.mean(jnp.argmax(logits, -1) == batch["label"])}, ctx.model_state)

  def per_example(state, batch):
    logits = model.apply({"params": state["params"]}, batch["image"])
    return {"val/loss": optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]),
            "val/accuracy": (jnp.argmax(logits, -1) == batch["label"]).astype(jnp.float32)}

  def eval_fn(state, step):
    del step
    batches = data.eval_batches(val_source, global_batch=config.batch_size,
                                local_batch=parallel.local_batch_size(config.batch_size))
    return trainer.evaluate(per_example, state, batches)

  init = lambda rng: model.init(rng, jnp.zeros((1, config.image_size, config.image_size, 3)))
  host_tf, device_tf = [data.RandomFlip()], None
  if config.device_flip:
    host_tf = []
    device_tf = lambda batch, rng: {**batch, "image": augment.random_flip(batch["image"], rng)}
  derive = lambda c: {"optim.freeze": optim.with_frozen(c.optim.freeze, ("head/.*",))} if c.freeze_head else {}
  return trainer.Task(init_variables=init, loss_fn=loss_fn, train_source=train_source,
                      train_transforms=host_tf, device_transform=device_tf, eval_fn=eval_fn, derive_config=derive)


def train_and_evaluate(config, workdir):
  return trainer.train(config, workdir, make_task(config))


if __name__ == "__main__":
  cli.run_main(train_and_evaluate)
