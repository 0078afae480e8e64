"""The classifier as a library: text splitting, language, identifiers (and
SSNs never echoed), thresholds, the shipped model on unseen hand-written
mail, reproducible training, and refusal of corrupt or incompatible model
files."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from classifiers.classify import MessageText, classify
from classifiers.corpus import load_corpus
from classifiers.evaluation import NEVER, choose_thresholds
from classifiers.identifiers import extract_identifiers
from classifiers.labels import LABELS
from classifiers.language import detect_language
from classifiers.model import ModelLoadError, TextClassifier
from classifiers.store import SHIPPED_DIR, ModelHolder, load_newest, model_files
from classifiers.text import split_body
from classifiers.train import train

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def shipped() -> TextClassifier:
    return load_newest(SHIPPED_DIR)


# Unseen, hand-written for this test (not from the corpus): (subject, body, label, language).
UNSEEN = [
    ("locked out again", "Third wrong password and now the portal says my account is locked. I remember it now, "
     "can someone unlock it? Our account owner is on vacation.", "account_locked", "en"),
    ("forgot my password", "I can't remember my ACE password and the temporary password e-mail never arrived. "
     "How do I reset it?", "password_reset", "en"),
    ("new importer - need ACE access", "We just started importing and want to apply for an ACE Portal importer "
     "account. What is the enrolment process?", "account_setup", "en"),
    ("ACE portal is down", "The ACE portal will not load for anyone in our office since 9am, and our ABI "
     "transmissions get no response. Is there an outage?", "system_status", "en"),
    ("AESDirect EEI rejected", "Our EEI filing in AESDirect keeps failing with a fatal error on the Schedule B "
     "number. Who can help with export filings?", "export_aesdirect", "en"),
    ("ACH refund enrollment", "How do we enroll in ACH refunds so the money goes straight to our bank account "
     "instead of a paper check?", "ach_refund", "en"),
    ("unsubscribe CSMS", "Please remove me from the CSMS mailing list, I no longer want these messages.",
     "csms_subscription", "en"),
    ("ACE report columns", "How can I customize an ACE Report to add the entry summary date column and "
     "schedule it to run every Monday?", "ace_reports", "en"),
    ("cuenta bloqueada", "Buenos días, intenté entrar al portal de ACE varias veces y ahora mi cuenta está "
     "bloqueada. ¿Me pueden ayudar a desbloquearla?", "account_locked", "es"),
    ("olvidé mi contraseña", "No recuerdo mi contraseña de ACE y no me llega el correo con la contraseña "
     "temporal. ¿Cómo la restablezco?", "password_reset", "es"),
    ("reembolso por ACH", "¿Cómo me inscribo para recibir los reembolsos por ACH en nuestra cuenta bancaria? "
     "Ya no queremos cheques.", "ach_refund", "es"),
    ("darme de baja de CSMS", "Por favor ya no me manden los mensajes CSMS a este correo, quiero darme de "
     "baja de la suscripción.", "csms_subscription", "es"),
    ("exportación AESDirect", "Al transmitir la EEI en AESDirect nos da un error fatal. ¿Con quién vemos "
     "los problemas de exportación?", "export_aesdirect", "es"),
    ("el portal de ACE no funciona", "Desde la mañana el portal de ACE no carga para nadie en la oficina y "
     "las transmisiones no reciben respuesta. ¿Hay una falla general del sistema?", "system_status", "es"),
    ("liberación de carga", "Nuestro contenedor sigue retenido, el estatus de cargo release en ACE dice que "
     "no está liberado aunque la entrada ya se transmitió. ¿Qué falta?", "cargo_release", "es"),
]


def test_shipped_model_labels_unseen_mail_correctly(shipped):
    messages = [MessageText(subject=s, new_text=b) for s, b, _l, _g in UNSEEN]
    results = classify(shipped, messages)
    wrong = [(s, r.label, r.confidence) for (s, _b, label, _g), r in zip(UNSEEN, results) if r.label != label]
    assert wrong == []
    assert [r.language for r in results] == [g for _s, _b, _l, g in UNSEEN]
    assert all(r.model_version == shipped.version for r in results)
    # Clear requests like these are the ones the desk answers automatically.
    assert sum(r.auto for r in results) >= 12


def test_shipped_model_is_small_and_its_card_reports_unseen_writers():
    files = model_files(SHIPPED_DIR)
    assert files and files[-1].stat().st_size < 8_000_000
    stem = files[-1].name[: -len(".npz")]
    card = json.loads((SHIPPED_DIR / f"{stem}.card.json").read_text())
    assert (SHIPPED_DIR / f"{stem}.confusion.svg").read_text().startswith("<svg")
    for key in ("version", "training_data_sha256", "label_counts", "lowo", "thresholds", "libraries",
                "comparison", "writers"):
        assert key in card
    # Three model families compared on writers they never read; the chosen one meets the targets.
    assert len(card["comparison"]) >= 3
    assert set(card["thresholds"]) == set(LABELS)
    assert len(card["writers"]) >= 9 and set(card["lowo"]["per_writer"]) == set(card["writers"])
    overall = card["lowo"]["overall"]
    assert overall["macro_f1"] >= 0.95
    assert overall["auto"]["precision"] >= 0.99 and overall["auto"]["coverage"] >= 0.80
    assert card["lowo"]["worst_writer_macro_f1"] >= 0.92


def test_shipped_model_loads_without_running_code(tmp_path):
    """The model file is an array archive: an object array (a pickle) inside is refused, not run."""
    [path] = model_files(SHIPPED_DIR)[-1:]
    with np.load(path, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    arrays["word_idf"] = np.array([object()], dtype=object)
    evil = tmp_path / "acedesk-model-99999999-000000-evil.npz"
    np.savez(evil, **arrays)
    with pytest.raises(ModelLoadError, match="evil"):
        TextClassifier.load(evil)


@pytest.mark.parametrize("text", [
    "asdkjh qwpoeiru zxmcnv lkjasd poiqwe mnbzxc",
    "",
    "!!!! ???? 12345 67890",
    "Мой аккаунт заблокирован, помогите пожалуйста",
])
def test_gibberish_and_empty_input_is_never_automatic(shipped, text):
    [result] = classify(shipped, [MessageText(subject="", new_text=text)])
    assert result.auto is False
    assert result.label in LABELS


def test_mixed_topics_are_not_automatic(shipped):
    text = ("Three things: my account is locked, we also need to enroll in ACH refunds, the ACE report for "
            "entry summaries is missing a column, and please unsubscribe my colleague from CSMS.")
    [result] = classify(shipped, [MessageText(subject="several questions", new_text=text)])
    assert result.auto is False


def test_spanish_is_detected_and_labelled(shipped):
    body = ("Hola, buenas tardes. Quisiera saber cómo agregar a nuestro agente aduanal como parte a notificar "
            "(formulario 4811) en el portal de ACE para que le lleguen los avisos.")
    [result] = classify(shipped, [MessageText(subject="parte a notificar", new_text=body)])
    assert result.language == "es"
    assert result.label == "notify_party"


@pytest.mark.parametrize("text,language", [
    ("Buenos días, no puedo entrar a mi cuenta", "es"),
    ("Good morning, I cannot log in to my account", "en"),
    ("¿Dónde está el reporte?", "es"),
    ("ACE", "en"),
    ("contraseña", "es"),
])
def test_language_detection(text, language):
    assert detect_language(text) == language


def test_language_falls_back_to_the_hint_when_the_text_shows_none(shipped):
    [result] = classify(shipped, [MessageText(subject="", new_text="27-4419803", language_hint="es")])
    assert result.language == "es"


def test_identifiers_are_extracted_with_shape_checks():
    ids = extract_identifiers(
        "UserID: jgarza_4471, SCAC MAEU, filer code K4M, surety code 418, EIN 27-4419803, "
        "IOR 27-4419803AB and CBP number 260115-01234. Entry 4KX-0938172-5.")
    assert ids["user_ids"] == ["jgarza_4471"]
    assert ids["scac"] == ["MAEU"]
    assert ids["filer_codes"] == ["K4M"]
    assert ids["surety_codes"] == ["418"]
    assert ids["ein"] == ["27-4419803"]
    assert ids["ior"] == ["27-4419803AB", "260115-01234"]
    assert "ssn_present" not in ids
    # Shapes that do not fit are not identifiers.
    bad = extract_identifiers("filer code is wrong, SCAC ABCDEFG, surety code 41, EIN 00-1234567")
    assert bad == {}
    es = extract_identifiers("mi usuario es JPEREZ01, código de filer 3QF")
    assert es == {"user_ids": ["JPEREZ01"], "filer_codes": ["3QF"]}


@pytest.mark.parametrize("text", [
    "our IOR is 123-45-6789, please check",
    "SSN 123456789 is the importer number",
    "IOR 123-45-678900 with the suffix",
    "número de importador 123 45 6789",
])
def test_ssn_is_recognised_and_never_echoed(shipped, text):
    ids = extract_identifiers(text)
    assert ids.get("ssn_present") is True
    dump = json.dumps(ids)
    for digits in ("6789", "123-45", "12345", "45-6789"):
        assert digits not in dump
    [result] = classify(shipped, [MessageText(subject="importer number", new_text=text)])
    assert "6789" not in json.dumps(result.to_dict())


def test_split_body_sets_apart_replies_outlook_blocks_and_signatures():
    body = ("Still locked, please help.\n\nThanks,\nAna\nAcme Imports\n\n"
            "On Tue, Mar 10, 2026 at 4:02 PM ACE Support <\nsupport@cbp.example> wrote:\n> Please reply")
    new, quoted, signature = split_body(body)
    assert new == "Still locked, please help."
    assert quoted.startswith("On Tue") and signature.startswith("Thanks,")
    es = "Sigue bloqueado.\n\nSaludos cordiales\nAna\n\nDe: ACE\nEnviado el: lunes\nPara: Ana\nAsunto: RE: x\n\nhola"
    assert split_body(es)[0] == "Sigue bloqueado."
    disclaimer = "Need help with ACH.\n\nEste mensaje y sus anexos son confidenciales y para uso exclusivo."
    assert split_body(disclaimer)[0] == "Need help with ACH."


def test_split_body_keeps_the_forwarded_request_under_a_short_note():
    body = ("FYI, see below.\n\n---------- Forwarded message ---------\nFrom: Bank <b@bank.example>\n"
            "Date: Tue, Mar 10, 2026\nSubject: refunds\nTo: CFO <c@x.example>\n\n"
            "Please direct all customs refunds to the bank as notify party.\n\nRegards,\nBank")
    new, quoted, _sig = split_body(body)
    assert new.startswith("FYI, see below.")
    assert "notify party" in new and "From:" not in new and "Regards" not in new
    assert quoted.startswith("---------- Forwarded")
    # A reply's history is not the request.
    reply = "thanks, all good now\n\nOn Mon, Mar 9, 2026, ACE <a@x> wrote:\n> your cargo was released"
    assert split_body(reply)[0] == "thanks, all good now"


def test_thresholds_keep_automatic_actions_within_target():
    labels = ["a", "b"]
    # 'a': 200 right at high confidence, then 5 wrong at 0.7; 'b': wrong at the top: never automatic.
    proba = np.array([[0.95, 0.05]] * 200 + [[0.7, 0.3]] * 5 + [[0.2, 0.8]] * 3 + [[0.1, 0.9]] * 2)
    y = ["a"] * 200 + ["b"] * 5 + ["a"] * 3 + ["a"] * 2
    th = choose_thresholds(proba, y, labels)
    assert th["a"] == 0.95
    assert th["b"] == NEVER


def _small_training_set(per_label: int = 8) -> list:
    """A few examples per label from each of three writers."""
    out, seen = [], {}
    for e in load_corpus(writers=("w1_landport", "w3_compliance", "w5_it")):
        key = (e.writer, e.label)
        if seen.get(key, 0) < per_label:
            out.append(e)
            seen[key] = seen.get(key, 0) + 1
    return out


def test_training_is_deterministic_with_a_seed(tmp_path):
    examples = _small_training_set()
    probe = [e.text for e in load_corpus(writers=("w2_smallimporter",))[:60]]
    runs = []
    for i in range(2):
        result = train(examples, seed=7, specs=("word+char+cues/svm",), version="test",
                       progress=False)
        path = result.model.save(tmp_path / str(i))
        card = json.loads(path.with_name("acedesk-model-test.card.json").read_text())
        runs.append((result.model.predict_proba(probe), card))
    (p1, c1), (p2, c2) = runs
    assert np.array_equal(p1, p2)
    strip = lambda c: {k: {m: v for m, v in d.items() if m != "seconds"} for k, d in c.items()}  # noqa: E731
    assert strip(c1["comparison"]) == strip(c2["comparison"])
    for key in ("lowo", "thresholds", "training_data_sha256", "label_counts", "spec", "writers"):
        assert c1[key] == c2[key], key
    assert set(c1["lowo"]["per_writer"]) == {"w1_landport", "w3_compliance", "w5_it"}
    # And the saved model predicts what the trained one did.
    loaded = TextClassifier.load(tmp_path / "0" / "acedesk-model-test.npz")
    assert np.allclose(loaded.predict_proba(probe), p1, atol=1e-6)


def test_leave_one_writer_out_never_scores_what_it_trained_on():
    from classifiers.lowo import out_of_writer

    examples = _small_training_set(5)
    # A "correction" that repeats a text of the left-out writer must not leak into its fold:
    # with it, the fold would score that text perfectly.
    leaked = [e for e in examples if e.writer == "w5_it"][:10]
    corrections = [type(e)(label=e.label, language=e.language, subject=e.subject, body=e.body,
                           writer="corrections") for e in leaked]
    with_leak = out_of_writer("word+char/svm", examples, corrections=corrections)
    without = out_of_writer("word+char/svm", examples)
    rows = [i for i, e in enumerate(examples) if e in leaked]
    assert np.allclose(with_leak.proba[rows], without.proba[rows])


def test_confusable_near_ties_abstain(shipped):
    row = np.zeros(len(shipped.labels))
    row[shipped.labels.index("pga_access")] = 0.5
    row[shipped.labels.index("password_reset")] = 0.45
    assert shipped.abstains(shipped.labels, row)
    row[shipped.labels.index("password_reset")] = 0.05
    row[shipped.labels.index("other")] = 0.45
    assert not shipped.abstains(shipped.labels, row)


def _copy_shipped(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for p in SHIPPED_DIR.iterdir():
        shutil.copy(p, directory / p.name)
    return model_files(directory)[-1]


def test_corrupt_or_foreign_model_files_are_refused(tmp_path):
    good = _copy_shipped(tmp_path / "m")
    # Garbage under a model name, without a card.
    garbage = tmp_path / "acedesk-model-99999999-000000-bad.npz"
    garbage.write_bytes(b"this is not a model")
    with pytest.raises(ModelLoadError, match=str(garbage.name)):
        TextClassifier.load(garbage)
    # A flipped byte: the card's SHA-256 no longer matches.
    data = bytearray(good.read_bytes())
    data[len(data) // 2] ^= 0xFF
    good.write_bytes(bytes(data))
    with pytest.raises(ModelLoadError, match="corrupt"):
        TextClassifier.load(good)
    # An archive of something else.
    other = tmp_path / "acedesk-model-99999999-000001-x.npz"
    np.savez(other, hello=np.arange(3))
    with pytest.raises(ModelLoadError, match="not a model archive"):
        TextClassifier.load(other)
    with pytest.raises(ModelLoadError, match="no such"):
        TextClassifier.load(tmp_path / "missing.npz")


def test_reload_keeps_the_previous_model_when_the_newest_is_corrupt(tmp_path, caplog):
    directory = tmp_path / "models"
    _copy_shipped(directory)
    holder = ModelHolder.open(directory)
    before = holder.current
    bad = directory / "acedesk-model-99999999-000000-bad.npz"
    bad.write_bytes(b"\x80\x04garbage")
    with caplog.at_level("ERROR", logger="acedesk.classifier"):
        assert holder.reload() is False
    assert holder.current is before
    assert bad.name in caplog.text and "keeping" in caplog.text
    # A good newer model is picked up.
    bad.unlink()
    newer = before.path.with_name("acedesk-model-99999999-000000-new.npz")
    shutil.copy(before.path, newer)
    card = json.loads(before.path.with_name(before.path.name.replace(".npz", ".card.json")).read_text())
    newer.with_name("acedesk-model-99999999-000000-new.card.json").write_text(json.dumps(card))
    assert holder.reload() is True
    assert holder.current is not before and holder.current.path == newer


def test_classifiers_never_import_the_daemon():
    code = ("import sys, classifiers.classify, classifiers.train, classifiers.store, classifiers.corpus, "
            "classifiers.evaluation; bad = [m for m in sys.modules if m.split('.')[0] in "
            "('daemon', 'smtplib', 'imapclient', 'aiosmtpd', 'sqlalchemy')]; print(bad); "
            "sys.exit(1 if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
