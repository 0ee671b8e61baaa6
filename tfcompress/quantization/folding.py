"""BatchNormalization folded into the preceding layer's kernel and bias.

Inference: ``BN(conv(x, W) + b) == conv(x, W * s) + beta + (b - mean) * s`` with
``s = gamma / sqrt(moving_variance + epsilon)`` per output channel. Quantizing
``W * s`` (not ``W``) makes the trained int8 weights the ones TFLite stores.

Training follows Jacob et al. 2018 / Krishnamoorthi 2018: the convolution runs
once with the folded, fake-quantized kernel ``z = conv(x, q(W * s))``; batch
statistics of the unfolded output are recovered from ``z / s``, and the output is
rescaled by ``sigma / sigma_batch`` so the forward pass equals batch-norm
training while the weights stay on the deployed grid. No second float
convolution is needed.
"""

from keras import ops

# gamma can be exactly 0 (a dead channel); dividing by a clamped scale keeps NaNs out.
_MIN_SCALE = 1e-12


def fold_scale(gamma, moving_variance, epsilon):
    """Per-channel factor ``gamma / sqrt(moving_variance + epsilon)`` applied to the kernel."""
    return gamma * ops.rsqrt(moving_variance + epsilon)


def folded_bias(bias, beta, moving_mean, scale):
    """Bias of the folded layer: ``beta + (bias - moving_mean) * scale``."""
    return beta + (bias - moving_mean) * scale


def batch_norm_training(z, scale, bias, beta, moving_variance, epsilon):
    """Batch-norm training output computed from the folded layer's output.

    Args:
        z: output of the folded kernel without bias, channels last.
        scale: the fold factor the kernel was multiplied by.
        bias: the original layer's bias (zeros when it has none).
        beta: BN offset.
        moving_variance: BN moving variance (the kernel was folded with it).
        epsilon: BN epsilon.

    Returns:
        ``(outputs, batch_mean, batch_variance)``: the BN training output and
        the batch statistics of the unfolded pre-BN tensor, for the moving
        averages.
    """
    axes = tuple(range(len(z.shape) - 1))
    z_mean, z_variance = ops.moments(z, axes=axes)
    safe_scale = ops.where(ops.abs(scale) < _MIN_SCALE, _MIN_SCALE, scale)
    batch_mean = z_mean / safe_scale + bias
    batch_variance = z_variance / ops.square(safe_scale)
    correction = ops.sqrt(moving_variance + epsilon) * ops.rsqrt(batch_variance + epsilon)
    outputs = (z - z_mean) * correction + beta
    return outputs, batch_mean, batch_variance
