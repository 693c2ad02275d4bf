"""Adversarial-training defenses: each step crafts examples on the model being trained
and takes the plain cross-entropy step on them (not on the clean batch, as both
references do).

- ``fgsm_at``, fast adversarial training with a random start (Wong, Rice & Kolter 2020,
  "Fast is better than free"; reference code locuslab/fast_adversarial):

      delta ~ U(-eps, eps);  delta <- clip_[-eps, eps](delta + alpha * sign(grad_x CE(x + delta)))
      x_adv = clip_[clip_min, clip_max](x + delta)

  with step alpha = 1.25 * eps (``step`` 1.25, relative to eps, the paper's 10/255 at
  8/255). Known risk: catastrophic overfitting at large eps (robust accuracy collapses
  within an epoch); the reference stops early on PGD accuracy, sweeper does not.

- ``pgd_at``, PGD adversarial training (Madry et al. 2018, "Towards Deep Learning Models
  Resistant to Adversarial Attacks"; MadryLab/cifar10_challenge): a uniform random start
  in the L-inf ball, then ``steps`` signed-gradient steps of ``step`` * eps, each
  projected onto the ball and the clip range. Defaults: eps 8/255, 7 steps of eps/4
  (2/255), as in the reference.

``eps`` is a fraction of the dataset's clip range (package docstring): the budget in
input units is eps * (clip_max - clip_min). Examples are crafted in training mode, as
in both references (batch statistics, and stochastic quantizers sample); like there,
crafting forward passes also move batch norm's running statistics. Random starts are
stateless draws from (seed, step), so a resumed training repeats them.
"""

from __future__ import annotations

from sweeper.defenses.base import Defense
from sweeper.defenses.spec import DefenseSpec
from sweeper.plan.limits import positive, whole


class AdversarialTraining(Defense):
    """L-inf adversarial training: ``steps`` = 1 with step 1.25 is fast AT (FGSM with a
    random start), more steps PGD."""

    def __init__(self, name: str, eps: float, step: float, steps: int, clip_values: tuple[float, float]):
        super().__init__()
        self.name, self.steps, self.clip_values = name, steps, clip_values
        width = clip_values[1] - clip_values[0]
        self.eps, self.alpha = eps * width, step * eps * width  # in input units

    def gradients(self, model, loss_fn, x, y, key, step):
        import tensorflow as tf

        x_adv = tf.stop_gradient(self.craft(model, loss_fn, x, y, key))
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x_adv, training=True))
        return loss, tape.gradient(loss, model.trainable_variables), {}

    def craft(self, model, loss_fn, x, y, key):
        """x + delta from a random start in the eps ball, after ``steps`` signed steps."""
        import tensorflow as tf

        low, high = self.clip_values
        x = tf.convert_to_tensor(x, tf.float32)
        delta = tf.random.stateless_uniform(tf.shape(x), seed=tf.cast(key, tf.int64),
                                            minval=-self.eps, maxval=self.eps)
        delta = tf.clip_by_value(x + delta, low, high) - x  # the start lies in the clip range
        for _ in range(self.steps):
            with tf.GradientTape() as tape:
                tape.watch(delta)
                loss = loss_fn(y, model(x + delta, training=True))
            delta = delta + self.alpha * tf.sign(tape.gradient(loss, delta))
            delta = tf.clip_by_value(delta, -self.eps, self.eps)
            delta = tf.clip_by_value(x + delta, low, high) - x
        return x + delta


def _fgsm(p, clip, preset):
    return AdversarialTraining("fgsm_at", p["eps"], p["step"], 1, clip)


def _pgd(p, clip, preset):
    return AdversarialTraining("pgd_at", p["eps"], p["step"], p["steps"], clip)


SPECS = (
    DefenseSpec("fgsm_at", {"eps": 8 / 255, "step": 1.25},
                {"eps": positive(1.0), "step": positive(10.0)},
                "fast adversarial training: FGSM from a random start, step * eps (Wong et al.)",
                _fgsm, "Wong, Rice & Kolter 2020"),
    DefenseSpec("pgd_at", {"eps": 8 / 255, "steps": 7, "step": 0.25},
                {"eps": positive(1.0), "steps": whole(1, 1000), "step": positive(10.0)},
                "PGD adversarial training: L-inf PGD from a random start, steps of step * eps (Madry et al.)",
                _pgd, "Madry et al. 2018"),
)
