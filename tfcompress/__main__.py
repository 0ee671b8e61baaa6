from tfcompress.pipeline.cli import run

run()
