"""The foundation every other layer builds on; it imports nothing else from tfcompress.

The one model check and layer walker (`graph`), user-input checks (`validation`), atomic
output files (`files`), the child-process runner (`isolation`), native stderr filtering
(`native_stderr`), optional packages (`extras`), training backups (`backup`), the host CPU
(`machine`), datasets (`datasets`), reference models (`zoo`) and markdown tables (`tables`).
"""
