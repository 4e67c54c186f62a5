"""The paper's model: `model` (ReLocalizer and its family), `attention`, `recurrence`."""
