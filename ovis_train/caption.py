"""``python -m ovis_train.caption --model DIR image...``: caption images with a saved model."""

from ovis_train.model.caption import main

if __name__ == "__main__":
    raise SystemExit(main())
