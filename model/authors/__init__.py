"""The ZeroI2V authors' released models (github:MCG-NJU/ZeroI2V, mmaction2 checkpoints): their
configs read as data (config.py) and their checkpoints imported as merged models (convert.py)."""
