"""Calibration ("representative") data checks, for the export path: `tfcompress.core.representative`.

The implementation lives in core so that `quantize_model` (quantization) and the converter (export)
validate and calibrate from one piece of code; this module keeps the ``tfc.representative`` namespace.
"""

from tfcompress.core.representative import (  # noqa: F401
    ARG,
    DEFAULT_MAX_CALIBRATION_SAMPLES,
    InputSpec,
    RepresentativeDataError,
    check_model_outputs,
    format_shape,
    functional_input_specs,
    input_name,
    prepare,
    stacked,
)
