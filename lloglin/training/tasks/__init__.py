"""Training objectives ("tasks"), registered by name; `c.task` picks one ("lm" by default).

Importing this package registers the built-in tasks: `lm` (next-token prediction), `reward`
(a Bradley-Terry reward model on preference pairs) and `contrastive` (a CLIP-style dual encoder
on image-caption pairs, with NegBench's multiple-choice loss). A new task builds a `Task` (base.py says
what each field is) and calls `register_task`; the loop, the step functions, every optimizer,
checkpoints and export then serve it unchanged.
"""

from lloglin.training.tasks import contrastive, lm, reward  # noqa: F401  (register the tasks)
from lloglin.training.tasks.base import (DEFAULT_TASK, Task, get_task,  # noqa: F401
                                         init_from_export, register_task, summed_evaluation,
                                         task_names, task_of)
