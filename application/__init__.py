"""The application: the ``zdravlink`` command, the process roles and the supervisor that runs them.

The top layer (signing → gateway → monitoring → routing → adapters → application): the
only place that knows every package and wires them together. ``wiring`` builds what the
lower layers take (delivery channels by mode, the intake), ``roles`` runs each kind of
process, ``supervisor`` runs them all, and ``cli`` is the command line. Plugins (the
demo) add commands through the ``zdravlink.cli`` entry point group.
"""
