"""A study, as vaegrid reads it: its settings (``axes.py``: every axis, the one place), its
model (``core.py``: Study, TrialConfig, the grid's expansion and the trial keys), the study
file read as hostile input (``load.py``), the data sets and plug-ins it may name
(``datasets.py``, ``plugins.py``), and its fingerprint as a database stores it
(``fingerprint.py``)."""
