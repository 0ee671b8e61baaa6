from tfcompress.cli import run

run()
