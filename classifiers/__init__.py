"""The scikit-learn classifier: training corpus, text normalisation, features,
train/evaluate/predict, language detection, identifier extraction, model
artifacts with metadata.  Pure: no network or mail I/O, and nothing here
imports ``daemon``.

- ``labels``: the taxonomy's label names (a contract).
- ``text``: quote, forward and signature splitting (used by the parser).
- ``normalise``, ``features``: what the model reads (accent folding, caps, cached char n-grams).
- ``model``: ``TextClassifier`` (fit/predict/save/load, thresholds, abstention on confusable
  near-ties, refusal of bad files); the model families compared.
- ``artifact``: the saved model as a plain array archive (no pickles) and its predictor.
- ``evaluation``: metrics and the choice of per-label thresholds.
- ``lowo``: leave-one-writer-out evaluation, the headline measure.
- ``train``: families compared leave-one-writer-out, fitting, model card and confusion-matrix SVG.
- ``classify``: label + confidence + auto + language + identifiers, in batches.
- ``language``, ``identifiers``: en/es detection; UserID, SCAC, IOR, filer code, EIN, surety code.
- ``corpus``: the labelled corpus, one file per writer (``corpus/writers/*.jsonl``), and ``.eml`` export.
- ``store``: the newest model in a folder, and atomic reloads.
- ``model/``: the model shipped with the package.
"""
