"""The scikit-learn classifier: training corpus, text normalisation, features,
train/evaluate/predict, language detection, identifier extraction, model
artifacts with metadata.  Pure: no network or mail I/O."""
