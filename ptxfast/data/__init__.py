"""Reading images and masks, datasets and splits, synthetic phantoms."""
