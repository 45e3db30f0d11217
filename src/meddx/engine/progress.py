"""A rich progress bar for training: batches of the epoch with loss, the last validation metric and ETA."""

from __future__ import annotations

from typing import Any


class EpochProgress:
    """Context manager around ``rich.progress.Progress``; silent when ``enabled`` is False."""

    def __init__(self, epochs: int, steps: int, enabled: bool = True, console: Any = None) -> None:
        self.epochs, self.steps, self.enabled = epochs, steps, enabled
        self.console = console
        self.metric_text = ""

    def __enter__(self) -> EpochProgress:
        if self.enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.console = self.console or Console(stderr=True)
            self.progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                     TextColumn("loss {task.fields[loss]:.4f}"), TextColumn("{task.fields[metric]}"),
                                     TimeRemainingColumn(), console=self.console, transient=True)
            self.progress.__enter__()
            self.all = self.progress.add_task("total", total=self.epochs * self.steps, loss=0.0, metric="")
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.enabled:
            self.progress.__exit__(*exc)

    def set_epochs(self, epochs: int) -> None:
        self.epochs = epochs
        if self.enabled:
            self.progress.update(self.all, total=epochs * self.steps)

    def start_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if self.enabled:
            self.progress.update(self.all, description=f"epoch {epoch + 1}/{self.epochs}",
                                 completed=epoch * self.steps)

    def step(self, i: int, loss: float) -> None:
        if self.enabled:
            self.progress.update(self.all, advance=1, loss=loss, metric=self.metric_text)

    def end_epoch(self, row: dict[str, Any], monitor: str, improved: bool) -> None:
        value = row.get(f"val_{monitor}", float("nan"))
        self.metric_text = f"val {monitor} {value:.4f}"
        if self.enabled:
            mark = " [green]*best[/green]" if improved else ""
            acc = row.get("val_acc")
            acc_txt = f"  val acc {acc:.4f}" if acc is not None else ""
            vloss = row.get("val_loss")
            vloss_txt = f"val loss {vloss:.4f}  " if vloss is not None else ""
            self.console.print(f"epoch {row['epoch'] + 1:>3}/{self.epochs}  loss {row['train_loss']:.4f}  "
                               f"{vloss_txt}val {monitor} {value:.4f}{acc_txt}  "
                               f"{row['seconds']:.1f}s{mark}", soft_wrap=True)

    def note(self, text: str) -> None:
        if self.enabled:
            self.console.print(f"[yellow]{text}[/yellow]")
