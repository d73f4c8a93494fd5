from interlock._internal.cli.main import main

main()
