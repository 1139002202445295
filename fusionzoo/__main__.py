from fusionzoo.cli import main

raise SystemExit(main())
