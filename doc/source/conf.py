# Documentation of nova-amiboot: ``tox -e docs``, or tools/run-tests
# (sphinx-build -W -b html doc/source OUT with .venv).

# show-options renders the [amiboot] options through the package's
# oslo.config.opts entry point: the package must be installed (it is in
# .venv and in tox's environments).
extensions = ['oslo_config.sphinxext']

project = 'nova-amiboot'
copyright = 'nova-amiboot developers'
master_doc = 'index'
exclude_patterns = []
pygments_style = 'sphinx'
html_theme = 'alabaster'
html_theme_options = {'description': 'AMI boot method for OpenStack Nova '
                                      'and plain libvirt'}
# No version on the pages: pbr would take it from git at every build.
version = ''
release = ''
