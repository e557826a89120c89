"""Figure 5's dermatology categories (the DermNet groups the paper's dataset covers)."""

from __future__ import annotations

CATEGORIES: tuple[str, ...] = (
    "Psoriasis pictures Lichen Planus and related diseases",
    "Seborrheic Keratoses and other Benign Tumors",
    "Tinea Ringworm Candidiasis and other Fungal Infections",
    "Acne and Rosacea Photos",
    "Eczema Photos",
    "Actinic Keratosis Basal Cell Carcinoma and other Malignant Lesions",
    "Warts Molluscum and other Viral Infections",
    "Nail Fungus and other Nail Disease",
    "Systemic Disease",
    "Light Diseases and Disorders of Pigmentation",
    "Atopic Dermatitis Photos",
    "Vascular Tumors",
    "Melanoma Skin Cancer Nevi and Moles",
    "Bullous Disease Photos",
    "Scabies Lyme Disease and other Infestations and Bites",
    "Lupus and other Connective Tissue diseases",
    "Vasculitis Photos",
    "Herpes HPV and other STDs Photos",
    "Exanthems and Drug Eruptions",
    "Cellulitis Impetigo and other Bacterial Infections",
    "Poison Ivy Photos and other Contact Dermatitis",
    "Hair Loss Photos Alopecia and other Hair Diseases",
    "Urticaria Hives",
)
