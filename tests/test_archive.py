"""The public CSMS archive in the reader's language: a Spanish notice's page
has Spanish headings, and the index (and its search) is Spanish for ``?lang=es``
or a Spanish browser, English otherwise."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from csms import archive
from csms.render import NoticeView
from daemon.context import make_context
from daemon.notices.fanout import load_signer
from daemon.web.server import WebServer
from models.migrate import upgrade
from tests.servers import BackgroundComponent, free_port, wait_for_port
from tests.test_csms import web

PUBLISHED = dt.datetime(2026, 12, 3, 14, 0, tzinfo=dt.timezone.utc)
ENGLISH = NoticeView(number=67800001, title="ACE maintenance window", type="INFORMATION",
                     body="The **Portal** is down on Sunday.", topics=["ACE Portal"], related=[67700000],
                     published_at=PUBLISHED)
SPANISH = NoticeView(number=67800002, title="Mantenimiento de ACE", type="INFORMATION",
                     body="El **Portal** no estará disponible el domingo.", topics=["ACE Portal"], related=[67700000],
                     language="es", published_at=PUBLISHED, translation_of=67800001)
ENGLISH_HEADINGS = ("All notices", "Additional Information", "Programs Affected", "Type:", "Related:")


def test_a_spanish_notice_page_and_the_spanish_index_have_spanish_headings():
    files = archive.build_archive([ENGLISH, SPANISH], "https://csms.example.gov/archive")
    es = files["notices/67800002.html"]
    assert '<html lang="es">' in es and 'href="../index.es.html">Todos los avisos' in es
    for heading in ("Información adicional", "Programas afectados", "Tipo:", "Versión de", "Relacionados:",
                    "jueves, 3 de diciembre de 2026"):
        assert heading in es, heading
    assert not [h for h in ENGLISH_HEADINGS if h in es]
    en = files["notices/67800001.html"]
    assert all(h in en for h in ENGLISH_HEADINGS) and "Programas afectados" not in en
    index_es = files["index.es.html"]
    assert '<html lang="es">' in index_es and "<h1>Avisos CSMS</h1>" in index_es
    for heading in ("Número", "Fecha", "Idioma", "Título", "Buscar", "español", "3 de diciembre de 2026"):
        assert heading in index_es, heading
    assert "<th>Number</th>" not in index_es and "<h1>CSMS notices</h1>" in files["index.html"]


def test_the_served_index_and_search_follow_lang_and_accept_language(tmp_path, sqlite_url, config_factory):
    port = free_port()
    config = config_factory(sqlite_url, web={"listen": f"127.0.0.1:{port}"})
    ctx = make_context(config)
    upgrade(ctx.engine)
    root = Path(config.path(config.daemon.state_dir)) / config.csms.archive_dir
    root.mkdir(parents=True, exist_ok=True)
    for relative, text in archive.build_archive([ENGLISH, SPANISH], f"http://127.0.0.1:{port}/archive").items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_text(text, encoding="utf-8")
    server = BackgroundComponent(WebServer(ctx, load_signer(config))).start()
    try:
        wait_for_port(port)
        base = f"http://127.0.0.1:{port}/archive"
        for url, headers in ((base + "/?lang=es", {}), (base + "/", {"Accept-Language": "es-MX,es;q=0.9"}),
                             (base + "/index.html?lang=es", {})):
            status, page = web("GET", url, headers=headers)
            assert status == 200 and "<h1>Avisos CSMS</h1>" in page and "<th>Número</th>" in page, url
        for url, headers in ((base + "/", {}), (base + "/?lang=en", {"Accept-Language": "es"})):
            status, page = web("GET", url, headers=headers)
            assert status == 200 and "<h1>CSMS notices</h1>" in page and "<th>Number</th>" in page, url
        status, page = web("GET", base + "/search?q=domingo&lang=es")
        assert status == 200 and "1 aviso(s) encontrado(s)." in page and "Mantenimiento de ACE" in page
        status, page = web("GET", base + "/search?q=domingo")
        assert status == 200 and "1 notice(s) found." in page
        status, page = web("GET", base + "/notices/67800002.html")
        assert status == 200 and "Programas afectados" in page
    finally:
        server.stop()
        ctx.dispose()
    assert server.error is None
