"""`python -m bitsmith …` is the `bitsmith` command; torchrun starts it this way (`torchrun … -m bitsmith train …`)."""

from bitsmith.cli import main

if __name__ == "__main__":
    main()
