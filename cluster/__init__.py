"""Ray adapters over the lipsync library: the dub pipeline (dub.py) and Ray Train training (train.py).

Only this package (and jobs/) imports Ray; lipsync/ never does.
"""
