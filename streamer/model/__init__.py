"""BiRefNet (bilateral reference network) for dichotomous image segmentation, state-dict compatible with the official releases."""
