"""The batch trainer: offline evaluation splits, item-to-item models, model selection and publishing."""
