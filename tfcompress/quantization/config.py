"""The one object that configures quantization-aware training (QAT): `QATConfig`.

(Named ``QATConfig``, not ``QuantizationConfig``: ``keras.quantizers.QuantizationConfig``
configures Keras's own post-training ``model.quantize``, a different thing.)"""

import dataclasses


@dataclasses.dataclass(frozen=True)
class QATConfig:
    """How `quantize_model` fake-quantizes a model.

    The defaults follow TFLite's int8 specification: weights symmetric int8
    (zero point 0, range [-127, 127]), per-channel for convolutions; activations
    asymmetric int8 with ranges learned as moving averages of batch min/max.

    Args:
        ema_decay: how slowly an activation range shrinks (and of nothing
            else: folded BatchNormalization keeps the momentum of the original
            layer). A range widens at once to a batch's extremes beyond it and
            otherwise shrinks toward them by ``1 - ema_decay`` of the gap per
            step, so it tracks the extremes post-training calibration uses; 0.999
            (half-life ~700 steps) keeps a calibrated start through a short
            fine-tune. The first batch sets a range that never saw data.
        per_channel: per-channel weight ranges for Conv1D/2D, DepthwiseConv,
            SeparableConv and Conv2DTranspose. Dense kernels are always
            per-tensor because TFLite cannot convert per-channel Dense weights.
        fold_batch_norm: fold a BatchNormalization that directly follows a
            Conv/DepthwiseConv/SeparableConv/Conv2DTranspose/Dense layer into it,
            so the int8 graph has no separate BN. Statistics keep updating
            during training until `freeze` is called.
        preserve_zeros: kernels holding exact zeros (a pruned model) keep them
            through training and in the int8 file.

    Example:

    >>> config = tfc.QATConfig(ema_decay=0.99)
    >>> qat_model = tfc.quantize_model(model, config=config)
    """

    ema_decay: float = 0.999
    per_channel: bool = True
    fold_batch_norm: bool = True
    preserve_zeros: bool = True

    def __post_init__(self):
        if isinstance(self.ema_decay, bool) or not isinstance(self.ema_decay, (int, float)):
            raise TypeError(f"ema_decay must be a float in [0, 1), got {self.ema_decay!r}.")
        if not 0.0 <= float(self.ema_decay) < 1.0:
            raise ValueError(
                f"ema_decay must be in [0, 1), got {self.ema_decay!r}; 0.999 (the default) suits most fine-tuning runs."
            )
        for name in ("per_channel", "fold_batch_norm", "preserve_zeros"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be True or False, got {getattr(self, name)!r}.")

    def get_config(self):
        return dataclasses.asdict(self)

    @classmethod
    def from_config(cls, config):
        return cls(**config)
