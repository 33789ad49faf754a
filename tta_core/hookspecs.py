"""Every extension point tta offers to plugins.

A plugin is a module (or object) with functions named after these hooks and decorated with
:data:`tta_core.plugin.hookimpl`. It is found through the ``tta.plugins`` entry-point group,
exactly like the built-in plugins under ``plugins/``::

    [project.entry-points."tta.plugins"]
    my_plugin = "my_package.plugin"

Reading this file tells a plugin author everything that can be hooked.
"""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("tta")


@hookspec
def tta_register(register):
    """Register components. Called once per plugin, when the plugins are loaded.

    ``register(kind, name, factory)`` adds one component: ``kind`` is one of
    :data:`tta_core.registry.KINDS`, ``name`` the word recipes use in ``type:``, and
    ``factory`` a callable that builds the component from the recipe node's keyword
    arguments (its signature is what recipes are validated against), or a
    ``"package.module:attribute"`` string imported on first use. Import heavy libraries
    (torch, transformers, ...) inside factories or behind such strings, so that listing
    plugins stays fast.

    ``register(kind, name, factory, default=True)`` also offers the component as its kind's
    default: what a command uses when neither the recipe nor the command line names one
    (``tta-run eval`` comparing two folders without a recipe takes the default embedder). A
    kind with no default, or with defaults from several plugins, makes the user choose.

    A plugin's registrations are added together: if one of them fails (an unknown kind, a
    name another plugin already has), none of them is, and the plugin is reported broken.
    What the plugin prints while it is imported and registers (and what a factory module
    prints when it is first imported) goes to stderr: stdout belongs to the command, and
    ``tta-run plugins --json`` is read by programs. Returns nothing.
    """
