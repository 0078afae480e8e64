"""The classifier in the daemon and on the command line: the classify stage
moves parsed rows to classified (label, confidence, auto, language,
identifiers, model version), SIGHUP reloads keep the old model when the new
one is corrupt, analysts' corrections are stored and read back for
training, and ``acedesk classify`` / ``evaluate`` keep their contracts."""

from __future__ import annotations

import json
import shutil
from email.message import EmailMessage
from pathlib import Path

import pytest
from sqlalchemy import select

from classifiers.corpus import Example, write_eml_dir
from classifiers.store import SHIPPED_DIR, model_files
from daemon.stages import classify as stage_classify
from daemon.stages import parse as stage_parse
from daemon.cli.main import main
from daemon.context import AppContext
from daemon.intake.store import NewMessage, insert_messages
from daemon.worker import drain
from models.classification import LabelCorrection, corrections_for_training, record_correction
from models.core import CLASSIFIED, InboundMessage
from models.session import transaction


def eml(subject: str, body: str, to: str = "helpdesk@ace-support.example", n: int = 0) -> bytes:
    msg = EmailMessage()
    msg["From"] = f"user{n}@trade.example"
    msg["To"] = to
    msg["Subject"] = subject
    msg["Message-ID"] = f"<t{n}@trade.example>"
    msg.set_content(body)
    return bytes(msg)


MAILS = [
    ("account locked", "My ACE account is locked after too many attempts, please unlock it. UserID: mlopez22",
     "helpdesk@ace-support.example"),
    ("cuenta bloqueada", "Mi cuenta de ACE está bloqueada después de varios intentos. ¿Me la pueden "
     "desbloquear? Nuestro IOR es 123-45-6789.", "ayuda@ace-support.example"),
    ("ACH refunds", "How do we sign up for ACH refunds to our bank account? EIN 27-4419803\n\nThanks,\nPat\n\n"
     "On Mon, Mar 9, 2026, ACE <a@x.example> wrote:\n> Your account is locked", "helpdesk@ace-support.example"),
]


def test_classify_stage_moves_parsed_rows_to_classified(sessions, engine, config_factory, db_url):
    ctx = AppContext(config=config_factory(db_url), engine=engine, sessions=sessions, instance="test")
    with transaction(sessions) as s:
        insert_messages(s, [NewMessage(desk=to, source="cli", raw=eml(subj, body, to, i))
                            for i, (subj, body, to) in enumerate(MAILS)])
    stage = stage_classify.make_stage(ctx)
    assert stage is not None and stage.consumes == "parsed"
    assert len(ctx.reload_hooks) == 1
    drain(sessions, [stage_parse.make_stage(ctx), stage], ctx.config.pipeline)
    with sessions() as s:
        rows = list(s.scalars(select(InboundMessage).order_by(InboundMessage.id)))
    assert [r.state for r in rows] == [CLASSIFIED] * 3
    assert [r.label for r in rows] == ["account_locked", "account_locked", "ach_refund"]
    assert [r.language for r in rows] == ["en", "es", "en"]
    version = model_files(SHIPPED_DIR)[-1].name[len("acedesk-model-"):-len(".npz")]
    assert {r.model_version for r in rows} == {version}
    assert all(0 < r.confidence <= 1 and isinstance(r.auto, bool) for r in rows)
    assert rows[0].identifiers == {"user_ids": ["mlopez22"]}
    assert rows[1].identifiers == {"ssn_present": True}
    assert rows[2].identifiers == {"ein": ["27-4419803"]}


def test_stage_reload_hook_keeps_the_old_model_on_a_corrupt_file(tmp_path, sessions, engine, config_factory,
                                                                  db_url, caplog):
    models = tmp_path / "models"
    models.mkdir()
    for p in SHIPPED_DIR.iterdir():
        shutil.copy(p, models / p.name)
    ctx = AppContext(config=config_factory(db_url, classifier={"model_dir": str(models)}), engine=engine,
                     sessions=sessions, instance="test")
    assert stage_classify.make_stage(ctx) is not None
    holder = ctx.reload_hooks[0].__self__
    before = holder.current
    (models / "acedesk-model-99999999-000000-x.npz").write_bytes(b"not a model")
    with caplog.at_level("ERROR"):
        ctx.reload_hooks[0]()  # what SIGHUP runs; it must not raise
    assert holder.current is before
    assert "acedesk-model-99999999-000000-x.npz" in caplog.text


def test_no_usable_model_leaves_the_stage_out(tmp_path, sessions, engine, config_factory, db_url):
    empty = tmp_path / "none"
    empty.mkdir()
    ctx = AppContext(config=config_factory(db_url, classifier={"model_dir": str(empty)}), engine=engine,
                     sessions=sessions, instance="test")
    assert stage_classify.make_stage(ctx) is None


def test_corrections_are_recorded_and_read_for_training(sessions, engine, config_factory, db_url):
    ctx = AppContext(config=config_factory(db_url), engine=engine, sessions=sessions, instance="test")
    with transaction(sessions) as s:
        insert_messages(s, [NewMessage(desk="helpdesk@ace-support.example", source="cli",
                                       raw=eml("help", "Where do I add a notify party in the portal?\n\nRegards,\nKim"))])
    drain(sessions, [stage_parse.make_stage(ctx), stage_classify.make_stage(ctx)], ctx.config.pipeline)
    with transaction(sessions) as s:
        message_id = s.scalars(select(InboundMessage.id)).one()
        record_correction(s, message_id, "ace_reports", "analyst1")
        record_correction(s, message_id, "notify_party", "analyst2")  # the newest wins
        with pytest.raises(ValueError):
            record_correction(s, message_id, "not_a_label", "analyst1")
    with sessions() as s:
        assert len(s.scalars(select(LabelCorrection)).all()) == 2
        rows = corrections_for_training(s)
        row = s.get(InboundMessage, message_id)
        assert row.label == "notify_party" and row.auto is False
    assert [(r.message_id, r.label) for r in rows] == [(message_id, "notify_party")]
    assert rows[0].text == "help\nWhere do I add a notify party in the portal?"


def _config(tmp_path: Path, db_url: str, model_dir: Path | None = None) -> Path:
    path = tmp_path / "acedesk.toml"
    lines = ["[database]", f'url = "{db_url}"']
    if model_dir is not None:
        lines += ["[classifier]", f'model_dir = "{model_dir}"']
    path.write_text("\n".join(lines) + "\n")
    return path


def test_cli_classify_json_contract(tmp_path, capsys):
    good = tmp_path / "a.eml"
    good.write_bytes(eml("Forgot password", "I forgot my ACE password and need a temporary one. SSN 123-45-6789"))
    bad = tmp_path / "b.eml"
    bad.write_bytes(b"\x00\x01 not mail at all")
    config = _config(tmp_path, f"sqlite:///{tmp_path / 'db.sqlite'}")
    code = main(["--config", str(config), "classify", "--json", str(good), str(tmp_path / "missing.eml"), str(bad)])
    out = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert code == 0
    assert [o["file"] for o in out] == [str(good), str(tmp_path / "missing.eml"), str(bad)]
    first = out[0]
    assert {"file", "label", "confidence", "auto", "language", "identifiers"} <= set(first)
    assert first["label"] == "password_reset" and first["language"] == "en"
    assert first["identifiers"] == {"ssn_present": True}
    assert "6789" not in json.dumps(out)
    assert "error" in out[1] and "error" in out[2]


def test_cli_refuses_a_corrupt_model_with_one_line(tmp_path, capsys):
    models = tmp_path / "models"
    models.mkdir()
    (models / "acedesk-model-20990101-000000-x.npz").write_bytes(b"garbage")
    mail = tmp_path / "a.eml"
    mail.write_bytes(eml("hi", "hello"))
    config = _config(tmp_path, f"sqlite:///{tmp_path / 'db.sqlite'}", models)
    code = main(["--config", str(config), "classify", "--json", str(mail)])
    captured = capsys.readouterr()
    assert code != 0 and captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and "acedesk-model-20990101-000000-x.npz" in lines[0]


def test_cli_evaluate_prints_the_figures(tmp_path, capsys):
    examples = [Example(label, "en", subj, body) for subj, body, label, _lang in [
        ("locked", "My ACE account is locked, please unlock it.", "account_locked", "en"),
        ("password", "I forgot my ACE password, how do I reset it?", "password_reset", "en"),
        ("CSMS", "Please unsubscribe me from CSMS messages.", "csms_subscription", "en"),
        ("reembolso", "¿Cómo me inscribo a los reembolsos por ACH?", "ach_refund", "es"),
    ]]
    csv_path = write_eml_dir(examples, tmp_path / "set")
    config = _config(tmp_path, f"sqlite:///{tmp_path / 'db.sqlite'}")
    assert main(["--config", str(config), "evaluate", str(tmp_path / "set"), str(csv_path)]) == 0
    out = capsys.readouterr().out
    assert "macro-F1:  1.0000" in out and "automatic: precision" in out and "coverage" in out
    assert main(["--config", str(config), "evaluate", "--json", str(tmp_path / "set"), str(csv_path)]) == 0
    figures = json.loads(capsys.readouterr().out)
    assert figures["accuracy"] == 1.0 and figures["per_label"]["account_locked"]["f1"] == 1.0


def test_cli_train_writes_a_versioned_model_with_card_and_plot_and_uses_corrections(tmp_path, capsys):
    from classifiers.corpus import CORPUS_DIR
    from daemon.config import load_config
    from daemon.context import make_context

    # A small corpus: two writers, a handful of messages per label each.
    corpus = tmp_path / "corpus" / "writers"
    corpus.mkdir(parents=True)
    for writer in ("w2_smallimporter", "w4_pga"):
        seen: dict[str, int] = {}
        lines = []
        for line in (CORPUS_DIR / "writers" / f"{writer}.jsonl").read_text(encoding="utf-8").splitlines():
            label = json.loads(line)["label"]
            if seen.get(label, 0) < 6:
                seen[label] = seen.get(label, 0) + 1
                lines.append(line)
        (corpus / f"{writer}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    corpus = corpus.parent
    out = tmp_path / "models"
    config = _config(tmp_path, f"sqlite:///{tmp_path / 'db.sqlite'}", out)
    assert main(["--config", str(config), "db", "upgrade"]) == 0
    # One analyst correction in the database.
    ctx = make_context(load_config(config))
    try:
        with transaction(ctx.sessions) as s:
            insert_messages(s, [NewMessage(desk="helpdesk@ace-support.example", source="cli",
                                           raw=eml("4811", "Where is the special address notification form?"))])
        drain(ctx.sessions, [stage_parse.make_stage(ctx)], ctx.config.pipeline)
        with transaction(ctx.sessions) as s:
            record_correction(s, s.scalars(select(InboundMessage.id)).one(), "notify_party", "analyst")
    finally:
        ctx.dispose()
    capsys.readouterr()
    code = main(["--config", str(config), "train", "--corpus", str(corpus), "--quiet",
                 "--specs", "word+char/svm,word+char+cues/svm"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "1 correction(s)" in captured.err
    [model] = model_files(out)
    stem = model.name[: -len(".npz")]
    card = json.loads((out / f"{stem}.card.json").read_text())
    assert card["sources"]["corrections"] == 1
    assert set(card["comparison"]) == {"word+char/svm", "word+char+cues/svm"}
    assert set(card["lowo"]["per_writer"]) == {"w2_smallimporter", "w4_pga"}
    assert card["corrections"]["count"] == 1
    assert card["libraries"]["scikit-learn"] and card["training_data_sha256"]
    assert (out / f"{stem}.confusion.svg").read_text().startswith("<svg")
    assert "written to" in captured.out
    # A second version, keeping only the newest: the old one's three files go.
    assert main(["--config", str(config), "train", "--corpus", str(corpus), "--quiet", "--no-corrections",
                 "--specs", "word+char/svm", "--keep", "1"]) == 0
    [newer] = model_files(out)
    # The headline measure from the command line: one row per writer left out.
    capsys.readouterr()
    assert main(["--config", str(config), "evaluate", "--writers", "--corpus", str(corpus), "--spec",
                 "word+char/svm", "--json"]) == 0
    figures = json.loads(capsys.readouterr().out)
    assert set(figures["per_writer"]) == {"w2_smallimporter", "w4_pga"}
    assert 0.0 < figures["overall"]["macro_f1"] <= 1.0 and figures["curve"]
    assert newer != model and not (out / f"{stem}.card.json").exists()
