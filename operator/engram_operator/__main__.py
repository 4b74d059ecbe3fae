from engram_operator.main import main

main()
