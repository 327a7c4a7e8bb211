from vaegrid.cli import main

raise SystemExit(main())
