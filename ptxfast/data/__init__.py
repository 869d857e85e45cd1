"""Reading images and masks, datasets and splits, synthetic phantoms.

`dicom` reads DICOM, PNG and JPEG exactly (a package of one module per concern), `resize` is
the one area resize, `rle` the mask encoding; `records` indexes CANDID-PTX / SIIM-ACR, `splits`
makes and keeps the paper's splits, `rotation` schedules each epoch's negatives, `datasets`
holds the torch Dataset; `eligibility` is the chest-radiograph rule; `phantom` and `synth` draw
and write synthetic datasets in the real layouts. `scratch` keeps the decode's reused arrays and
`seeded` the hash order splits and rotation share.
"""
