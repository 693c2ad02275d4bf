"""Form (c) of ``bench/stacked_training.py``: N replicas of one sweeper model trained as
one vectorised network, each replica with its own weights, optimizer state and batch.

``Vectorised(models)`` copies the N models' weights into stacked variables (a leading
replica axis) and runs the models' own functional graph (their layers, in the order
Keras sorted them) once for all N replicas:

- activations of the convolutional part are packed replica-major along the channel
  axis, ``[batch, h, w, N * channels]``, so a convolution is one *grouped* convolution
  (``tf.nn.conv2d`` with N groups), a depthwise convolution is one depthwise convolution
  over all N * channels, a separable one is both, and batch normalisation's per-channel
  statistics are per replica by construction;
- ``Flatten`` unpacks to ``[batch, N, features]``; a dense layer is one batched matmul
  (``einsum('bnd,ndu->bnu')``);
- activations, ``Add`` and ``Multiply`` are elementwise, so they run on the packed tensor
  through the layer's own ``call`` (QKeras's activation quantizers included);
- weight quantizers with a fixed scale (``alpha`` a number: int8/4/2, ternary, binary)
  are elementwise and run once on the stacked weights; those whose scale is computed from
  the weights (``alpha='auto_po2'``: stq, sbinary) run per replica, so no replica's
  scale sees another's weights;
- the loss is the sum over replicas of each replica's batch-mean cross-entropy (each
  replica's gradient is its own), and one optimizer of the models' class and settings
  updates the stacked variables: Adam/Adamax/SGD are elementwise, so this is N
  independent optimizers that share an iteration count. Kernel constraints (QKeras's
  clip) are elementwise and kept.

``verify`` checks that this is the same network as the Keras models, not only something
of the same cost: inference logits, and for deterministic presets the weights after one
training step, against each model's own. Layers outside what sweeper's small_cnn and
stq_net use (pooling, dropout, ...) raise ``NotImplementedError``.
"""

from __future__ import annotations

import numpy as np


class Vectorised:
    """N same-architecture Keras models as one stacked network (see the module docstring)."""

    def __init__(self, models):
        import tensorflow as tf

        self.template = models[0]
        self.n = len(models)
        self.stacked = {}  # id(template variable) -> stacked tf.Variable
        self.places = {}  # id(template variable) -> (layer index, weight index) in every model
        for index, layer in enumerate(self.template.layers):
            others = [m.layers[index] for m in models]
            if any(type(o) is not type(layer) for o in others):
                raise ValueError("vectorised form: the models differ in architecture")
            for w_index, weight in enumerate(layer.weights):
                value = np.stack([o.weights[w_index].numpy() for o in others])
                self.stacked[id(weight)] = tf.Variable(
                    value, trainable=weight.trainable, constraint=getattr(weight, "constraint", None),
                    name=weight.name.replace(":", "_"))
                self.places[id(weight)] = (index, w_index)
        config = self.template.optimizer.get_config()
        self.optimizer = type(self.template.optimizer).from_config(config)
        self.trainable_ids = [key for key, v in self.stacked.items() if v.trainable]
        self.trainable = [self.stacked[key] for key in self.trainable_ids]

    def twin(self, model, key):
        """``model``'s variable at the place of the template variable ``id`` key."""
        layer_index, weight_index = self.places[key]
        return model.layers[layer_index].weights[weight_index]

    # ------------------------------------------------------------ forward

    def forward(self, x_packed, training: bool):
        """Logits ``[batch, N, classes]`` for the packed input ``[batch, h, w, N * c]``."""
        from tf_keras.src import backend as keras_backend

        model = self.template
        values = {id(model.inputs[0]): x_packed}
        with keras_backend.learning_phase_scope(1 if training else 0):  # as models.QModel
            for layer in model.layers:
                if type(layer).__name__ == "InputLayer":
                    continue
                inputs = layer.input
                args = [values[id(t)] for t in inputs] if isinstance(inputs, list) else values[id(inputs)]
                values[id(layer.output)] = self._layer(layer, args, training)
        return values[id(model.outputs[0])]

    def _w(self, weight):
        return self.stacked[id(weight)]

    def _q(self, quantizer, stacked):
        """The weight quantizer on each replica's weights (once on the stack when it is
        elementwise, i.e. its scale is a fixed number)."""
        import tensorflow as tf

        if quantizer is None:
            return stacked
        if isinstance(getattr(quantizer, "alpha", 1), str):  # scale computed from the weights
            return tf.stack([quantizer(stacked[i]) for i in range(self.n)])
        return quantizer(stacked)

    def _layer(self, layer, x, training: bool):
        kind = type(layer).__name__
        if getattr(layer, "activation", None) not in (None,) and kind in ("QConv2D", "QDepthwiseConv2D",
                                                                        "QSeparableConv2D", "QDense"):
            if getattr(layer.activation, "__name__", "") != "linear":
                raise NotImplementedError(f"vectorised form: fused activation in {layer.name}")
        handler = {"QConv2D": self._conv, "QDepthwiseConv2D": self._depthwise,
                   "QSeparableConv2D": self._separable, "QDense": self._dense,
                   "BatchNormalization": self._batch_norm, "Flatten": self._flatten}.get(kind)
        if handler is not None:
            return handler(layer, x, training)
        if kind in ("QActivation", "Activation", "Add", "Multiply"):  # elementwise
            return layer.call(x)
        raise NotImplementedError(f"vectorised form: no rule for layer {kind} ({layer.name})")

    def _bias(self, layer, y):
        import tensorflow as tf

        if not layer.use_bias:
            return y
        bias = self._q(layer.bias_quantizer_internal, self._w(layer.bias))
        if len(y.shape) == 3:  # [batch, N, units]
            return y + bias
        return tf.nn.bias_add(y, tf.reshape(bias, [-1]))

    def _grouped(self, kernel):
        """[N, kh, kw, cin, f] -> [kh, kw, cin, N * f] (output channels replica-major)."""
        import tensorflow as tf

        n, kh, kw, cin, f = kernel.shape
        return tf.reshape(tf.transpose(kernel, [1, 2, 3, 0, 4]), [kh, kw, cin, n * f])

    def _packed_depthwise(self, kernel):
        """[N, kh, kw, c, 1] -> [kh, kw, N * c, 1]."""
        import tensorflow as tf

        n, kh, kw, c, m = kernel.shape
        return tf.reshape(tf.transpose(kernel, [1, 2, 0, 3, 4]), [kh, kw, n * c, m])

    def _conv(self, layer, x, training):
        import tensorflow as tf

        kernel = self._q(layer.kernel_quantizer_internal, self._w(layer.kernel))
        y = tf.nn.conv2d(x, self._grouped(kernel), strides=layer.strides, padding=layer.padding.upper(),
                         dilations=layer.dilation_rate)
        return self._bias(layer, y)

    def _depthwise_part(self, layer, x, quantizer, weight):
        import tensorflow as tf

        kernel = self._packed_depthwise(self._q(quantizer, self._w(weight)))
        return tf.nn.depthwise_conv2d(x, kernel, strides=(1, *layer.strides, 1), padding=layer.padding.upper(),
                                      dilations=layer.dilation_rate)

    def _depthwise(self, layer, x, training):
        y = self._depthwise_part(layer, x, layer.depthwise_quantizer_internal, layer.depthwise_kernel)
        return self._bias(layer, y)

    def _separable(self, layer, x, training):
        import tensorflow as tf

        y = self._depthwise_part(layer, x, layer.depthwise_quantizer_internal, layer.depthwise_kernel)
        pointwise = self._q(layer.pointwise_quantizer_internal, self._w(layer.pointwise_kernel))
        y = tf.nn.conv2d(y, self._grouped(pointwise), strides=1, padding="VALID")
        return self._bias(layer, y)

    def _dense(self, layer, x, training):
        import tensorflow as tf

        kernel = self._q(layer.kernel_quantizer_internal, self._w(layer.kernel))
        return self._bias(layer, tf.einsum("bnd,ndu->bnu", x, kernel))

    def _flatten(self, layer, x, training):
        import tensorflow as tf

        b, h, w, nc = x.shape
        c = nc // self.n
        x = tf.transpose(tf.reshape(x, [-1, h, w, self.n, c]), [0, 3, 1, 2, 4])
        return tf.reshape(x, [-1, self.n, h * w * c])

    def _batch_norm(self, layer, x, training):
        """tf-keras's fused batch norm (its Bessel handling of the moving variance), per
        packed channel, i.e. per replica and channel."""
        import tensorflow as tf

        if len(x.shape) != 4:
            raise NotImplementedError(f"vectorised form: batch norm on a {len(x.shape)}-D input ({layer.name})")
        flat = lambda w: tf.reshape(self._w(w), [-1])  # noqa: E731
        gamma, beta = flat(layer.gamma), flat(layer.beta)
        moving_mean, moving_var = self._w(layer.moving_mean), self._w(layer.moving_variance)
        if not training:
            y, _, _ = tf.compat.v1.nn.fused_batch_norm(x, gamma, beta, mean=tf.reshape(moving_mean, [-1]),
                                                       variance=tf.reshape(moving_var, [-1]),
                                                       epsilon=layer.epsilon, is_training=False)
            return y
        size = tf.cast(tf.size(x) / tf.size(gamma), tf.float32)
        y, mean, var = tf.compat.v1.nn.fused_batch_norm(
            x, gamma, beta, mean=tf.reshape(moving_mean, [-1]),
            variance=tf.reshape(moving_var, [-1]) * size / (size - 1.0), epsilon=layer.epsilon,
            is_training=True, exponential_avg_factor=1.0 - layer.momentum)
        moving_mean.assign(tf.reshape(mean, moving_mean.shape))
        moving_var.assign(tf.reshape(var * (size - 1.0) / size, moving_var.shape))
        return y

    # ------------------------------------------------------------ training

    def gradients(self, x_packed, y_stacked):
        """(loss, gradients of ``self.trainable``) of one training forward (which also
        updates batch norm's moving statistics, as Keras's does); ``y_stacked`` one-hot
        ``[batch, N, classes]``. The loss is the sum of the replicas' batch means."""
        import tensorflow as tf

        with tf.GradientTape() as tape:
            logits = self.forward(x_packed, training=True)
            per_sample = tf.nn.softmax_cross_entropy_with_logits(y_stacked, logits)  # [batch, N]
            loss = tf.reduce_sum(tf.reduce_mean(per_sample, axis=0))
        return loss, tape.gradient(loss, self.trainable)

    def step(self, x_packed, y_stacked):
        """One training step of every replica."""
        loss, grads = self.gradients(x_packed, y_stacked)
        self.optimizer.apply_gradients(zip(grads, self.trainable))
        return loss

    def train_function(self, iterators):
        """A compiled step that draws one batch from each replica's iterator (as Keras's
        train function draws from its own) and trains all replicas on them."""
        import tensorflow as tf

        @tf.function
        def run(its):
            batches = [next(it) for it in its]
            x = tf.concat([b[0] for b in batches], axis=-1)  # replica-major channels
            y = tf.stack([b[1] for b in batches], axis=1)
            return self.step(x, y)

        call = lambda: run(iterators)  # noqa: E731
        call.function, call.args = run, (iterators,)  # for graph sizes
        return call


def pack(xs) -> np.ndarray:
    """N batches [batch, h, w, c] -> [batch, h, w, N * c], replica-major."""
    return np.concatenate(xs, axis=-1)


def verify(build, n: int, x_list, y_onehot_list, deterministic: bool) -> dict:
    """How far the vectorised form is from the N Keras models it stacks (worst replica).

    ``build()`` makes one model compiled as sweeper compiles it (a fresh one per call).
    ``logits``: inference logits, max absolute difference. For deterministic presets
    (else None): ``grads``, the gradient of a training forward over every trainable
    weight, ||mine - Keras's|| / ||Keras's||; ``moving``, batch norm's moving statistics
    after that forward, max difference relative to each tensor's largest value; and the
    control ``grads_ulp``: the same norm between the Keras model's own gradients on x and
    on x moved by one float32 ulp. Summation order is not fixed across kernels, and a
    quantizer turns a rounding difference at one of its steps into a whole step (int8:
    1/256), so for fixed-point presets ``grads`` is meaningful next to ``grads_ulp``
    only: the same network computes ``grads`` within the spread of ``grads_ulp``."""
    import tensorflow as tf

    models = [build() for _ in range(n)]
    vec = Vectorised(models)
    logits = vec.forward(tf.constant(pack(x_list)), training=False).numpy()
    result = {"logits": max(float(np.max(np.abs(logits[:, i] - models[i](x_list[i], training=False).numpy())))
                            for i in range(n)),
              "grads": None, "moving": None, "grads_ulp": None}
    if not deterministic:
        return result
    _, grads = vec.gradients(tf.constant(pack(x_list)), tf.constant(np.stack(y_onehot_list, axis=1)))
    loss_fn = tf.keras.losses.CategoricalCrossentropy(from_logits=True)
    worst_grad = worst_moving = worst_ulp = 0.0
    for i, model in enumerate(models):
        own = [vec.twin(model, key) for key in vec.trainable_ids]
        with tf.GradientTape() as tape:
            loss = loss_fn(y_onehot_list[i], model(x_list[i], training=True))
        theirs = [g.numpy() for g in tape.gradient(loss, own)]
        mine = [g[i].numpy() for g in grads]
        worst_grad = max(worst_grad, _relative(mine, theirs))
        for key, stacked in vec.stacked.items():
            if not stacked.trainable:  # batch norm's moving statistics
                own_value = vec.twin(model, key).numpy()
                difference = float(np.max(np.abs(stacked[i].numpy() - own_value)))
                worst_moving = max(worst_moving, difference / float(np.max(np.abs(own_value))))
        nudged = np.nextafter(x_list[i], np.float32(np.inf))
        with tf.GradientTape() as tape:
            loss = loss_fn(y_onehot_list[i], model(nudged, training=True))
        worst_ulp = max(worst_ulp, _relative([g.numpy() for g in tape.gradient(loss, own)], theirs))
    result.update(grads=worst_grad, moving=worst_moving, grads_ulp=worst_ulp)
    return result


def _relative(mine, theirs) -> float:
    """||mine - theirs|| / ||theirs|| over lists of arrays."""
    difference = sum(float(np.sum((a - b) ** 2)) for a, b in zip(mine, theirs))
    return float(np.sqrt(difference / sum(float(np.sum(b ** 2)) for b in theirs)))
