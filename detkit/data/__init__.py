"""Data: VOC/COCO loading into one ``Record`` type, augmentation, batching, demo data.

Modules: ``record`` (the sample record and box convention), ``images`` (robust image reading),
``voc`` / ``coco`` (loaders), ``convert`` (VOC -> COCO JSON), ``transforms`` (albumentations),
``dataset`` (torch Dataset), ``batch`` (padded image batches), ``sampler`` (aspect-ratio grouping),
``synthetic`` (the generated demo set).
"""
