"""Named public dermatology datasets (Fitzpatrick17k, DDI, SCIN, PAD-UFES-20, HAM10000, SkinCAP).

:mod:`~dermtrl.data.sources.registry` lists them with their licence and access terms and reads one by name;
:mod:`~dermtrl.data.sources.readers` maps each dataset's own files onto ingest items;
:mod:`~dermtrl.data.sources.skin_tone` normalises their skin-tone fields; :mod:`~dermtrl.data.sources.labels`
maps their labels onto the paper's categories through the shipped ``label_map.csv``;
:mod:`~dermtrl.data.sources.raw` holds what every reader yields.
"""
