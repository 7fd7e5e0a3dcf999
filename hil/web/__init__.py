"""``hil serve``: a read-only web view of a runs folder (``docs/web.md``).

* :mod:`hil.web.app`: the Starlette app (:func:`hil.web.app.create_app`) and the command (``main``);
* :mod:`hil.web.data`: what it reads (the run list, a run's document, stream rows, live state);
* :mod:`hil.web.pages`: the HTML pages (everything from a run file escaped);
* :mod:`hil.web.figures`: the report figures, rendered outside the runs folder;
* :mod:`hil.web.security`: loopback binds, the token, the Host check;
* :mod:`hil.web.assets`: the stylesheet and the plotting script (no CDN).
"""
