"""The wizard and the run journal: the window about an interrupted run at start,
and the journal of the wizard's own Apply (wizard/journal.py, wizard/recovery.py).

At start, the last interrupted run is shown (its id, when, the last operation
begun) with Resume (its answers are loaded; the windows, the review and Apply
follow as usual, and the Apply is journaled as resuming it), Undo (reverted at
once, the outcome shown), Ignore (marked abandoned) and Quit (exit 6, the run
left as it is).
"""

from __future__ import annotations

import logging
from typing import Any

import snack

from wizard.exits import EXIT_INTERRUPTED_RUN, EXIT_OK, EXIT_USAGE
from wizard.tui.widgets import TextWindow

log = logging.getLogger("hostsetup")

HELP = ("hostsetup keeps a journal of every Apply ({where}). This run began changing the "
        "host and did not end. Resume: plan again with its answers (the review shows what "
        "is left) and apply. Undo: revert what it applied, last first, checked by reading "
        "the host. Ignore: mark it abandoned and go on. Quit (Esc, Ctrl-C): leave it as it "
        "is (exit 6); 'hostsetup resume' and 'hostsetup undo' do the same from a shell.")
KEYS = " Tab/arrows move | Enter press | Esc/^C quit, the run left as it is | F1 help"


def earlier_run(flow: Any, backends: Any) -> int | None:
    """Deal with an interrupted run before the first window.  Returns the exit code
    to leave with (Quit, or a journal that cannot be used), else ``None``; Resume
    puts the run's answers in ``flow`` (``flow.resumes`` names the run)."""
    from wizard import journal, recovery

    while True:
        try:
            found = journal.unsettled()
        except journal.JournalError as exc:
            flow.ui.message("Run journal", f"{exc}\n\nNothing can be applied without it.")
            return EXIT_USAGE
        if not found:
            return None
        run = found[-1]
        if run.busy:
            flow.ui.message("Another run", f"Run {run.id} ({run.mode}) is running now "
                            f"(pid {run.header.get('pid')}). Wait for it to end.")
            return EXIT_INTERRUPTED_RUN
        text = (f"An earlier run was interrupted:\n\n  run {run.id} ({run.mode})\n"
                f"  started {run.when()}\n  last operation begun: {run.last_begun()}\n\n"
                "Resume it, undo it, or ignore it?")
        win = TextWindow("Interrupted run", text, ["Resume", "Undo", "Ignore", "Quit"],
                         keys=KEYS, rows=0, help_text=HELP.format(where=run.path.parent))
        win.ctrl_c = "return"
        result = flow.ui.show(win)
        button = "quit" if result in ("ESC", "CTRL-C") else win.pressed(result)
        if button == "quit":
            return EXIT_INTERRUPTED_RUN
        if button == "ignore":
            journal.mark(run, "abandoned")
        elif button == "resume" and run.mode != "undo":
            load(flow, run)
            return None
        elif button in ("resume", "undo"):  # an interrupted undo is finished by undoing again
            said: list[str] = []
            busy(flow, f"Undoing run {run.id}: reading the host and reverting...")
            code = recovery.carry_out(run, "undo", backends, said.append, via="wizard")
            flow.ui.message("Undo" if code == EXIT_OK else "Undo: not everything reverted",
                            "\n".join(said))


def busy(flow: Any, text: str) -> None:
    """A window saying what runs now (the work that follows is not stopped by a key:
    an undo must not be left half done; each of its calls is bounded)."""
    form = snack.GridForm(flow.ui.screen, "Please wait", 1, 1)
    form.add(snack.Label(text[:70]), 0, 0)
    form.draw()
    flow.ui.screen.refresh()
    flow.ui.screen.popWindow()


def load(flow: Any, run: Any) -> None:
    """Resume: the wizard's answers become the interrupted run's."""
    from steps import REGISTRY
    from wizard.commands import LISTS

    answers = run.answers
    flow.data = {s.name: dict(answers[s.name]) for s in REGISTRY if s.name in answers}
    flow.selected = list(flow.data)
    flow.commands = {k: answers[k] for k in LISTS if k in answers}
    flow.answers_given, flow.ask_steps, flow.raw = True, set(), None
    flow.resumes = run.id
    log.info("resuming run %s", run.id)


def start(flow: Any, answers: Any) -> Any:
    """The journal of the wizard's Apply (``flow.resumes`` marked resumed by it);
    raises ``JournalError``."""
    from wizard.journal import RunJournal, answers_document, mark, read_run

    journal = RunJournal.create("resume" if flow.resumes else "apply",
                                answers_document(answers), via="wizard", resumes=flow.resumes)
    if flow.resumes:
        old = read_run(flow.resumes)
        if old.state == "interrupted":
            mark(old, "resumed", journal.id)
    flow.ctx.journal = journal
    return journal


def report(journal: Any, run: Any) -> dict[str, Any]:
    """End the journal with the run's results; the report read back from it."""
    from wizard.journal import JournalError, read_path

    try:
        journal.finish(run)
        return dict(read_path(journal.path).report())
    except JournalError as exc:
        log.error("%s", exc)
        return dict(run.as_dict())
