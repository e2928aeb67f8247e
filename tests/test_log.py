"""Messages and bars (`treeclip.log`): the CLI prints treeclip's messages once each, on
the stderr of the moment, through tqdm; a library user gets plain `logging` records."""

from __future__ import annotations

import logging

from treeclip.log import configure_cli, get_logger, progress_bar


def test_cli_prints_each_message_once_on_stderr_beside_a_bar(capsys):
    configure_cli()
    configure_cli()  # idempotent: still one handler, so one line per message
    log = get_logger("treeclip.predict.runner")
    with progress_bar(3, desc="predicting") as bar:
        log.warning("a.jpg: not an image")
        bar.update(3)
    log.debug("not shown at INFO")
    err = capsys.readouterr().err
    assert err.count("treeclip: a.jpg: not an image\n") == 1
    assert "not shown" not in err and "predicting" in err


def test_library_use_gets_plain_log_records(caplog):
    with caplog.at_level(logging.INFO, logger="treeclip"):
        get_logger("evaluate.runner").info("encoding")
    assert [(r.name, r.getMessage()) for r in caplog.records] == [("treeclip.evaluate.runner", "encoding")]


def test_a_disabled_bar_prints_nothing(capsys):
    with progress_bar(10, desc="quiet", enabled=False) as bar:
        bar.update(4)
    assert capsys.readouterr().err == ""
