"""Dataset formats: annotation lists of Kinetics, Something-Something, UCF101 and HMDB51
(annotations.py), and AVA's CSVs (ava.py)."""
