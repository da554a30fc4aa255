from wacrm.cli.main import main

raise SystemExit(main())
