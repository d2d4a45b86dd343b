"""Pure planning and rendering: settings → plan (the backends' arithmetic) → the stack's file texts; no I/O."""
