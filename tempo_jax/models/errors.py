"""The one error type of checkpoint import / export."""

from __future__ import annotations


class CheckpointError(ValueError):
    """A checkpoint directory that cannot be read or written as asked.

    The message always names the file and, where one is involved, the tensor.

    Attributes:
      path: the file or directory at fault.
      tensor: the tensor name, or None when the problem is not about one tensor.
    """

    def __init__(self, path: object, message: str, *, tensor: str | None = None):
        self.path = str(path)
        self.tensor = tensor
        where = self.path if tensor is None else f"{self.path}: tensor {tensor!r}"
        super().__init__(f"{where}: {message}")
