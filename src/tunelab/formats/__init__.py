"""The only code that knows on-disk key names: detect, read and write each format."""
