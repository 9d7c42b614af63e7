from capi_sync.cli import main

main()
