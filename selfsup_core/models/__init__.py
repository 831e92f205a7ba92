"""Networks: encoders, the U-Net decoder, normalisation, encoder export and import."""
