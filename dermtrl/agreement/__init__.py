"""Agreement with experts beyond Table 1's MAE: reliability coefficients (ICC, Krippendorff's alpha) with bootstrap
CIs, the expert-to-expert ceiling, subgroup slices (skin tone), selective prediction and calibrated intervals."""
