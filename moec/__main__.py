import sys

from moec.compiler.cli.main import main

sys.exit(main())
