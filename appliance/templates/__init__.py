"""Certificate templates: sandboxed Jinja2 that turns a request into a certificate description.

* ``render.render(name, source, TemplateInput) -> CertificateDescription``
  runs a template; ``render.check_template`` compiles one when it is saved.
* ``sandbox`` is the Jinja2 environment it runs in (``filters`` the filters and
  globals a template may call, ``guards`` what the compiled template calls, ``limits``
  the bounds and the per-render budget).
* ``inputs.TemplateInput`` is what a template sees (the variables are listed there).
* ``model.CertificateDescription`` is what it must produce (JSON, strictly validated).
* ``build.to_builder`` turns a description into an unsigned ``cryptography`` builder.
* ``shipped.builtin_templates()`` are the templates shipped with the appliance.

Nothing is re-exported here: ``render`` is both a module and its main function,
so callers import from the modules (``from appliance.templates import render``
gives the module).
"""
