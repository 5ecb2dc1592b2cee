from thumbview.cli import main

main()
