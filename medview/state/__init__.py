"""Qt-free application state that the widgets render (napari's ViewerModel pattern).

A state object holds what a panel shows and decides what may be shown; it announces
changes through :class:`~medview.state.events.Event` s that the widgets subscribe to.
It never calls a widget, so its behaviour is tested without Qt, and the widgets only
render it.
"""
