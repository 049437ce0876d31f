"""Ray adapters over the lipsync library: the dub pipeline (dub.py) and Ray Train (training).

Only this package (and jobs/) imports Ray; lipsync/ never does.
"""
